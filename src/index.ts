export {
  checkpt,
  checkpoint,
  restoreInfo,
  type CheckptOptions,
  type RestoreInfo,
} from './api/checkpt.js';
export { CheckptError, isCheckptError, type CheckptErrorCode } from './api/errors.js';
export { expandTemplate, defaultCheckpointFile, DEFAULT_TEMPLATE } from './api/template.js';
