import { CheckptError } from '../common/errors.js';
import type { PrivilegeMode } from '../common/privilege.js';
import type { ManifestBase } from './job.js';

/**
 * Who may resume a checkpoint, on top of the file's trust check (image/trust.ts): an image made
 * without root resumes only as the user who made it, and never as root (its processes believe
 * they are uid 0, which outside that user's namespace would be real root); an ordinary user
 * resumes only images of their own, so no image gives anyone more rights than its maker had.
 * Root resumes what root made, as before. Undefined when allowed, else the refusal.
 */
export function resumeRefusal(
  manifest: Pick<ManifestBase, 'uid' | 'rootless' | 'granted'>,
  file: string,
  mode: PrivilegeMode,
  uid: number,
  grant: 'usable' | 'not a member' | 'none' = 'none',
): CheckptError | undefined {
  const maker = manifest.uid;
  // Anything but absent counts as made without root: a manifest that is unsure is not trusted.
  const madeRootless = manifest.rootless !== undefined || manifest.granted !== undefined;
  // Made on the host with the administrator's granted CRIU (src/engine/grant.ts).
  const granted = manifest.granted !== undefined;
  if (mode === 'root') {
    if (!madeRootless) return undefined;
    return new CheckptError(
      'EPERM',
      `${file} was made without root by uid ${maker}${granted ? " (with the administrator's granted CRIU)" : ''}; root does not resume it (its processes would run as root). Resume it as uid ${maker}: checkpt -r as that user.`,
    );
  }
  if (madeRootless && maker === uid && granted && grant !== 'usable')
    return new CheckptError(
      'EPERM',
      `${file} was made on the host with the administrator's granted CRIU, and resuming it needs that CRIU again: ${grant === 'none' ? 'there is none here' : 'you are not in the group it is granted to'}. Ask an administrator for \`checkpt setup --grant GROUP\` and membership of GROUP.`,
    );
  if (madeRootless && maker === uid) return undefined;
  if (!madeRootless)
    return new CheckptError(
      'EPERM',
      `${file} was made by root (a program of uid ${maker} checkpointed as root); resuming it needs root. Run checkpt -r as root, or checkpoint the program under a \`checkpt run\` of your own.`,
    );
  return new CheckptError(
    'EPERM',
    `${file} was made by uid ${maker}, and you are uid ${uid}: a checkpoint resumes only as the user who made it. Ask that user to resume it.`,
  );
}
