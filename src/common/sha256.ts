import { crypto } from './builtin.js';

/** A SHA-256 in progress: checkpt's OpenSSL addon's, or node:crypto's Hash (the same shape). */
export interface Sha256 {
  update(data: Uint8Array): Sha256;
  digest(): Buffer;
}

/** What native/checkpt-openssl.c exports for SHA-256 (absent where the node has no SHA256_*). */
export interface Sha256Addon {
  sha256Init(ctx: Buffer): boolean;
  sha256Update(ctx: Buffer, data: Uint8Array): boolean;
  sha256Final(ctx: Buffer, out: Buffer): boolean;
}

// The addon's state buffer (OpenSSL's SHA256_CTX is 112 bytes).
const CTX_BYTES = 256;
const DIGEST_BYTES = 32;

let addon: Sha256Addon | undefined;

/**
 * Hashes with the addon from now on, where it has SHA-256: a resume then checks its file without
 * loading node:crypto, ~10 ms of Node 26's start (docs/PERFORMANCE.md). The engine, which knows
 * where the compiled parts are, installs it (engine/native.ts, useNativeSha256).
 */
export function setSha256Addon(a: Partial<Sha256Addon> | undefined): void {
  addon = a?.sha256Init && a.sha256Update && a.sha256Final ? (a as Sha256Addon) : undefined;
}

class AddonSha256 implements Sha256 {
  private readonly ctx = Buffer.allocUnsafe(CTX_BYTES);
  private done = false;

  constructor(private readonly a: Sha256Addon) {
    if (!a.sha256Init(this.ctx)) throw new Error('internal: SHA256_Init failed');
  }

  update(data: Uint8Array): this {
    if (this.done) throw new Error('internal: SHA-256 updated after its digest');
    if (!this.a.sha256Update(this.ctx, data)) throw new Error('internal: SHA256_Update failed');
    return this;
  }

  digest(): Buffer {
    if (this.done) throw new Error('internal: SHA-256 digested twice');
    this.done = true;
    const out = Buffer.allocUnsafe(DIGEST_BYTES);
    if (!this.a.sha256Final(this.ctx, out)) throw new Error('internal: SHA256_Final failed');
    return out;
  }
}

/** A new SHA-256: the addon's once installed, node:crypto's otherwise. */
export function sha256(): Sha256 {
  return addon ? new AddonSha256(addon) : crypto().createHash('sha256');
}
