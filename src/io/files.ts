// Files a setting names (certificates, keys, CAs, userlists), read whole
// at start and at each reload.
import { readFileSync } from 'node:fs';

/** The bytes of `file`; throws an Error naming the setting and the file (never their contents) when it cannot be read. */
export function readSettingFile(setting: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new Error(`${setting}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}
