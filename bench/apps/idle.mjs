// (a) A small idle HTTP server: nothing but the bench endpoints.
import { serve } from './common.mjs';

serve(() => ({ app: 'idle' }));
