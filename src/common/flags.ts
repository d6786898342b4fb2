/**
 * The command-line flag that accepts a file the trust check refuses (`checkpt -r --trust-file
 * FILE`; src/image/trust.ts). Here, importing nothing, so parsing the command line loads nothing else.
 */
export const TRUST_FLAG = '--trust-file';
