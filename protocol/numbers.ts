/**
 * Makes protobufjs represent 64-bit integers as JavaScript numbers instead of Long objects.
 * Must be imported before the generated code (it reads util.Long when it loads). Every
 * 64-bit field on our wire (offsets, times, byte counts) stays below 2^53.
 */
import protobuf from 'protobufjs/minimal';

protobuf.util.Long = undefined as unknown as typeof protobuf.util.Long;
protobuf.configure();
