import { CheckptError } from '../common/errors.js';

/** A registry reference: `registry.example.com/team/app:tag` or `...@sha256:HEX`. */
export interface Reference {
  /** As written: `host`, `host:port`, `[::1]:port`; `docker.io` when none was given. */
  registry: string;
  /** The repository inside the registry: `team/app` (`library/x` for a bare Docker Hub name). */
  repository: string;
  tag?: string;
  digest?: string;
}

/** The prefix that makes a checkpoint argument a registry reference rather than a file. */
export const OCI_PREFIX = 'oci://';

export function isOciRef(arg: string): boolean {
  return arg.startsWith(OCI_PREFIX);
}

const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const DIGEST = /^sha256:[a-f0-9]{64}$/;

function bad(ref: string, why: string): CheckptError {
  return new CheckptError(
    'EBADNAME',
    `'${ref}' is not a registry reference (${why}). Write it as registry.example.com/team/app:tag or .../app@sha256:<64 hex digits>.`,
  );
}

/** Parses a reference the way container tools do: the first part is a host when it looks like one. */
export function parseReference(input: string): Reference {
  const ref = isOciRef(input) ? input.slice(OCI_PREFIX.length) : input;
  if (ref === '') throw bad(input, 'it is empty');
  let rest = ref;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) throw bad(input, `'${digest}' is not a sha256 digest`);
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw bad(input, `'${tag}' is not a tag`);
  }
  const parts = rest.split('/');
  let registry = 'docker.io';
  const first = parts[0] ?? '';
  if (parts.length > 1 && (first.includes('.') || first.includes(':') || first === 'localhost')) {
    registry = first;
    parts.shift();
    if (!/^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$/.test(registry))
      throw bad(input, `'${registry}' is not a host`);
  }
  if (parts.length === 0 || parts.some((p) => !COMPONENT.test(p)))
    throw bad(input, `'${parts.join('/')}' is not a repository name (lower case, digits, . _ -)`);
  if (registry === 'docker.io' && parts.length === 1) parts.unshift('library');
  if (tag === undefined && digest === undefined) tag = 'latest';
  return {
    registry,
    repository: parts.join('/'),
    ...(tag === undefined ? {} : { tag }),
    ...(digest === undefined ? {} : { digest }),
  };
}

/** The reference in the usual form (`host/repo:tag@digest`), for messages. */
export function formatReference(r: Reference): string {
  return `${r.registry}/${r.repository}${r.tag !== undefined ? `:${r.tag}` : ''}${r.digest !== undefined ? `@${r.digest}` : ''}`;
}

/** What the manifest is asked for by: the digest when there is one, else the tag. */
export function manifestRef(r: Reference): string {
  return r.digest ?? r.tag ?? 'latest';
}

/** The host to connect to: Docker Hub's registry is not at docker.io itself. */
export function endpointHost(registry: string): string {
  return registry === 'docker.io' ? 'registry-1.docker.io' : registry;
}
