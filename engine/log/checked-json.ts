/**
 * JSON files that carry their own checksum: checkpoint.json and topic.json from format
 * version 2 (engine/FORMAT.md, "Checksummed JSON files").
 *
 * The file is one JSON object: its fields, then `"checksum"`, the xxh32 (seed 0) of the
 * compact JSON text of the other fields in file order (JSON.stringify's text, whatever
 * whitespace the file itself has), as 8 lowercase hex digits. A flipped bit anywhere in the
 * content fails the check: without it, a flipped digit in a checkpoint's producer entry or a
 * topic's channel count parses as a good number and is trusted.
 *
 * Plain JavaScript xxh32 (not the batches' xxh64) so the check needs no WebAssembly module
 * loaded first: the tools read these files before anything else. The files hold integers,
 * strings, booleans and arrays only, so parse → stringify gives back the written text.
 */
import { xxh32 } from '../format/checksum';

const checksumField = 'checksum';
const encoder = new TextEncoder();

function checksumOf(fields: Record<string, unknown>): string {
  return xxh32(encoder.encode(JSON.stringify(fields)), 0).toString(16).padStart(8, '0');
}

/** The file's text: `fields` then their checksum; `indent` as JSON.stringify's (topic.json is indented for people). */
export function checkedJsonText(fields: Record<string, unknown>, indent?: number): string {
  if (checksumField in fields) throw new Error(`checkedJsonText: "${checksumField}" is the checksum's own field`);
  return JSON.stringify({ ...fields, [checksumField]: checksumOf(fields) }, null, indent);
}

/**
 * Parses a file's text into its fields (the checksum taken out). Throws with what is wrong
 * when it is not a JSON object or the checksum does not match. `checked` says whether there
 * was a checksum: format 1 files have none, and the caller, who knows the version, decides.
 */
export function parseCheckedJson(text: string): { fields: Record<string, unknown>; checked: boolean } {
  const parsed = parseJson(text);
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('not a JSON object');
  const { [checksumField]: checksum, ...fields } = parsed as Record<string, unknown>;
  if (checksum === undefined) return { fields, checked: false };
  const actual = checksumOf(fields);
  if (checksum !== actual) throw new Error(`checksum ${JSON.stringify(checksum)} does not match the content (${actual}): the file was damaged or edited`);
  return { fields, checked: true };
}

/**
 * JSON.parse, whose syntax error quotes the text it choked on made printable: a damaged file
 * can hold newlines, control bytes or invalid UTF-8, and the message is one line of a report
 * (verify, repair, the start-up log) that must not break into pieces or write raw bytes to a
 * terminal.
 */
export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new Error(printable((err as Error).message));
  }
}

/** `text` with control characters, U+FFFD (what invalid UTF-8 decodes to) and line separators written as \uXXXX. */
export function printable(text: string): string {
  return text.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\ufffd]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}
