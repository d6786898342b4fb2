// First: a program started on a Node that opened io_uring is restarted here, before the rest loads.
import './api/boot.js';
import { setBuiltInResources } from './api/hooks.js';
import { networkResource, trackUnref } from './api/network.js';
import { installRequestListeners } from './api/requests.js';
import { NETWORK, readAtLoad } from './common/config.js';

export {
  checkpt,
  checkpoint,
  restoreInfo,
  type CheckptOptions,
  type RestoreInfo,
} from './api/checkpt.js';
export { checkpointEvery, type EveryOptions, type PeriodicCheckpoints } from './api/every.js';
export { parseDuration } from './common/duration.js';
export { CheckptError, isCheckptError, type CheckptErrorCode } from './common/errors.js';
export { expandTemplate, defaultCheckpointFile, DEFAULT_TEMPLATE } from './common/template.js';
export {
  checkpointSignals,
  DEFAULT_SIGCKPT,
  DEFAULT_SIGCKPTEXIT,
  type CheckpointSignals,
} from './common/signals.js';
export {
  onCheckpointRequest,
  type CheckpointRequest,
  type CheckpointRequestHandler,
} from './api/requests.js';
export {
  requestCheckpoint,
  type RequestCheckpointOptions,
  type RequestCheckpointResult,
} from './launcher/request.js';

export {
  register,
  onRestore,
  HookFailure,
  type Resource,
  type RegisterOptions,
  type CheckpointContext,
  type RestoreContext,
} from './api/hooks.js';

// Importing checkpt makes the program answer SIGCKPT / SIGCKPTEXIT instead of dying of them.
installRequestListeners();
// Listeners are recorded around every checkpoint so a copy can take a busy port over, unless turned off.
if (readAtLoad(NETWORK)) {
  trackUnref();
  setBuiltInResources([networkResource]);
}
