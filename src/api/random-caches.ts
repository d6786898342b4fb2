import { randomUUID } from 'node:crypto';

/**
 * The two buffers of pre-drawn random bytes Node keeps in JavaScript (lib/internal/crypto/random.js
 * in Node 20 to 26): `uuidData`, 128 UUIDs' worth that randomUUID() (and v7) serve slot by slot,
 * and `randomCache`, 6 KiB that randomInt() reads 6 bytes at a time. Both are module variables no
 * API reaches; the inspector's view of randomUUID's closure does.
 */
export interface RandomCaches {
  uuid: Uint8Array;
  int: Uint8Array;
}

interface Session {
  connect(): void;
  disconnect(): void;
  post(method: string, params: object, cb: (err: Error | null, result: unknown) => void): void;
}

interface RemoteObject {
  objectId?: string;
  description?: string;
}
interface Property {
  name: string;
  value?: RemoteObject;
}
interface Properties {
  result: Property[];
  internalProperties?: Property[];
}

const HANDLE = 'checkpt.random-caches';

/**
 * Finds both buffers through an in-process inspector session (3-7 ms, no port opened), or returns
 * undefined: Node built without the inspector, or a Node whose module names these differently.
 */
export function locateRandomCaches(): RandomCaches | undefined {
  let inspector: { Session: new () => Session } | undefined;
  try {
    // Loaded here, not imported: node:inspector throws at load on a Node built without it.
    inspector = process.getBuiltinModule?.('node:inspector') as typeof inspector;
  } catch {
    return undefined;
  }
  if (inspector === undefined) return undefined;
  // uuidData is made at the first randomUUID(): one draw makes it, so that there is one to find.
  randomUUID();
  const key = Symbol.for(HANDLE);
  const g = globalThis as unknown as Record<symbol, unknown>;
  const found: Partial<RandomCaches> = {};
  let session: Session | undefined;
  try {
    session = new inspector.Session();
    session.connect();
    const s = session;
    const post = <T>(method: string, params: object): T => {
      let out: unknown;
      let failure: Error | null = null;
      // An in-process session answers before post() returns.
      s.post(method, params, (err, result) => {
        failure = err;
        out = result;
      });
      if (failure) throw failure;
      return out as T;
    };
    // A handle on a value of ours: a global the inspector can name, for the time of one call.
    const handle = (value: unknown): string | undefined => {
      g[key] = value;
      try {
        return post<{ result: RemoteObject }>('Runtime.evaluate', {
          expression: `globalThis[Symbol.for(${JSON.stringify(HANDLE)})]`,
          silent: true,
        }).result.objectId;
      } finally {
        delete g[key];
      }
    };
    const props = (objectId: string | undefined): Properties | undefined =>
      objectId === undefined
        ? undefined
        : post<Properties>('Runtime.getProperties', {
            objectId,
            ownProperties: true,
            generatePreview: false,
          });
    const scopes = props(
      props(handle(randomUUID))?.internalProperties?.find((p) => p.name === '[[Scopes]]')?.value
        ?.objectId,
    );
    const closure = scopes?.result.find((p) => p.value?.description === 'Closure');
    const vars = props(closure?.value?.objectId)?.result ?? [];
    const uuid = vars.find((v) => v.name === 'uuidData')?.value?.objectId;
    const int = vars.find((v) => v.name === 'randomCache')?.value?.objectId;
    const holder = handle(found);
    if (uuid === undefined || int === undefined || holder === undefined) return undefined;
    post('Runtime.callFunctionOn', {
      objectId: holder,
      functionDeclaration: 'function (uuid, int) { this.uuid = uuid; this.int = int; }',
      arguments: [{ objectId: uuid }, { objectId: int }],
      silent: true,
    });
  } catch {
    return undefined;
  } finally {
    try {
      session?.disconnect();
    } catch {
      // already gone
    }
  }
  const { uuid, int } = found;
  if (!(uuid instanceof Uint8Array) || !(int instanceof Uint8Array)) return undefined;
  // The sizes Node's code assumes: a buffer of another size is not the one we were looking for.
  if (uuid.length !== 16 * 128 || int.length !== 6 * 1024) return undefined;
  return { uuid, int };
}
