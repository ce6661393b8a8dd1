/** Checks of the numbers the SDK's options take (typed INVALID_ARGUMENT naming the option, before anything is used). */
import { shown, WaymarkError } from '../engine/format/errors';

/** A credit window or interval option: a positive (or, with zeroOk, non-negative) safe integer when given. */
export function checkCount(name: string, value: unknown, zeroOk = false): void {
  if (value === undefined) return;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < (zeroOk ? 0 : 1)) {
    throw new WaymarkError('INVALID_ARGUMENT', `${name} must be an integer ${zeroOk ? '0 or more' : 'above 0'}, not ${shown(value)}`);
  }
}

/** The longest a timer waits: past it Node fires at once (a warning), so a longer option meant a busy loop. */
export const timerMsMax = 0x7fffffff;

/** A duration option in whole ms, from `min` to what a timer can wait, when given. */
export function checkMs(name: string, value: unknown, min = 0): void {
  if (value === undefined) return;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > timerMsMax) {
    throw new WaymarkError('INVALID_ARGUMENT', `${name} must be a whole number of ms from ${min} to ${timerMsMax}, not ${String(value)}`);
  }
}

/** Refuses option names it does not know (a misspelt `chanels` made a one-channel topic, silently). */
export function checkKnown(what: string, options: object, known: readonly string[]): void {
  if (options === null || typeof options !== 'object') throw new WaymarkError('INVALID_ARGUMENT', `${what} options must be an object, not ${String(options)}`);
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) throw new WaymarkError('INVALID_ARGUMENT', `${what}: unknown option ${JSON.stringify(key)} (the options are ${known.join(', ')})`);
  }
}

/**
 * A channel number: a whole number 0 or more (INVALID_ARGUMENT otherwise: "1", -1 and 1.5
 * were CHANNEL_NOT_FOUND "has channels 0..1, not 1"); whether the topic has it is the caller's check.
 */
export function checkChannelNumber(name: string, value: unknown): void {
  if (value === undefined) return;
  if (!isChannelNumber(value)) {
    throw new WaymarkError('INVALID_ARGUMENT', `${name} must be a whole number 0 or more, not ${shown(value)}`);
  }
}

/** A whole number 0 or more: what a channel number may be (whether the topic has it is another check). */
export function isChannelNumber(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}
