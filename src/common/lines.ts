/**
 * Calls `onLine` with each line of a byte stream (the last one even without its newline) and
 * `onEnd` once the stream has ended: what readline's 'line' and 'close' give, without loading
 * `node:readline` (~2.5 ms of a resume's start) for a helper's few status lines.
 */
export function eachLine(
  stream: NodeJS.ReadableStream,
  onLine: (line: string) => void,
  onEnd: () => void,
): void {
  let rest = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    const parts = (rest + chunk).split(/\r?\n/);
    rest = parts.pop() ?? '';
    for (const line of parts) onLine(line);
  });
  stream.on('end', () => {
    if (rest !== '') onLine(rest);
    rest = '';
    onEnd();
  });
}
