import { CheckptError } from '../common/errors.js';
import { resume, type ResumeOptions, type Resumed } from '../engine/restore.js';
import { readImageHeader } from '../image/format.js';
import { KEY_ENV, keyFilePath } from '../image/key.js';
import type { ClientOptions } from './client.js';
import { pullTemporary } from './pull.js';

function untrusted(ref: string): CheckptError {
  return new CheckptError(
    'EUNTRUSTED',
    `${ref} is a plain (unencrypted) checkpoint: anyone who can push to that repository could have written it, and resuming it runs its code as root. Push checkpoints encrypted (CHECKPT_KEY_FILE), or pass --trust-file if you trust everyone who can push there.`,
  );
}

/**
 * Pulls `ref` (every blob checked as it downloads) into a private file and resumes it as
 * resume() resumes a local one; the file goes once the copy has all of its memory (or at once
 * when the resume fails). A plain checkpoint needs `trustFile`: a registry is not a directory only
 * root and the caller can write.
 */
export async function resumeFromRegistry(
  ref: string,
  options: ResumeOptions & ClientOptions = {},
): Promise<Resumed> {
  const trusting = options.trustFile === true;
  const pulled = await pullTemporary(ref, {
    ...options,
    // Refused before anything is downloaded when the config says plain; the file itself decides.
    accept: (config) => {
      if (!trusting && !config.encrypted) throw untrusted(ref);
      if (config.encrypted && keyFilePath(options.env) === undefined)
        throw new CheckptError(
          'EKEY',
          `${ref} is encrypted and ${KEY_ENV} is not set: set it to the key file it was written with. Nothing was downloaded.`,
        );
    },
  }).catch((e: unknown) => {
    // resume() ends the progress it was given; a pull that failed before it must too.
    options.progress?.end();
    throw e;
  });
  try {
    if (!trusting && !(await readImageHeader(pulled.file)).encrypted)
      throw untrusted(pulled.reference);
    const r = await resume(pulled.file, options);
    const loaded = r.loaded.finally(pulled.remove);
    loaded.catch(() => undefined);
    return { ...r, loaded };
  } catch (e) {
    pulled.remove();
    throw e;
  }
}
