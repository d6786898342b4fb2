// (a) A small idle HTTP server: nothing but the bench endpoints.
// First, before anything else: on Node 22+ checkpt then restarts the program without io_uring
// (docs/ARCHITECTURE.md, the restart at the import), so CRIU can dump it.
import '../../dist/index.js';
import { serve } from './common.mjs';

serve(() => ({ app: 'idle' }));
