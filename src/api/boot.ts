import { restartWithoutIoUring } from './reexec.js';

// Evaluated first of checkpt (index.ts imports it first): a restart then costs the least.
restartWithoutIoUring();
