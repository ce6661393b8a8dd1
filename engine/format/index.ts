/** The pure codecs of the log format (no node:fs, no sockets): shared by engine, protocol and SDK. */
export * from './errors';
export * from './limits';
export * from './checksum';
export * from './msg-id';
export * from './varint';
export * from './record-batch';
export * from './index-keys';
export * from './repack';
