import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { TLSSocket } from 'node:tls';
import { CheckptError } from '../common/errors.js';

/** This side's certificate and key, and the certificates of the peers it accepts (pinned). */
export interface Identity {
  cert: Buffer;
  key: Buffer;
  /** SHA-256 fingerprints (as X509Certificate.fingerprint256 prints them) of trusted peers. */
  trusted: Set<string>;
}

export interface IdentityFiles {
  cert: string;
  key: string;
  /** PEM certificates of the peers this side accepts, one after the other in one file. */
  trust: string;
}

/** Reads the files before anything is frozen or listened on: a bad one costs nothing. */
export function loadIdentity(files: IdentityFiles): Identity {
  const read = (what: string, path: string): Buffer => {
    try {
      return readFileSync(path);
    } catch (e) {
      throw new CheckptError(
        'EBADCONFIG',
        `Cannot read the ${what} ${path}: ${(e as Error).message}.`,
        { cause: e, path },
      );
    }
  };
  const cert = read('certificate', files.cert);
  const key = read('key', files.key);
  const trusted = new Set<string>();
  const pem = read('trust file', files.trust).toString('utf8');
  for (const m of pem.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g)) {
    try {
      trusted.add(new X509Certificate(m[0]).fingerprint256);
    } catch (e) {
      throw new CheckptError(
        'EBADCONFIG',
        `${files.trust} holds a certificate that cannot be read: ${(e as Error).message}.`,
        { cause: e, path: files.trust },
      );
    }
  }
  if (trusted.size === 0)
    throw new CheckptError(
      'EBADCONFIG',
      `${files.trust} holds no PEM certificate: put there the certificates of the peers to accept.`,
      { path: files.trust },
    );
  return { cert, key, trusted };
}

/** The peer's fingerprint when this side pins it, else undefined. */
export function trustedPeer(socket: TLSSocket, id: Identity): string | undefined {
  const fp = socket.getPeerCertificate()?.fingerprint256;
  return fp !== undefined && id.trusted.has(fp) ? fp : undefined;
}
