/** The protocol layer: schema, generated code, frame helpers, the error table. Pure (no I/O). */
export * from './errors';
export * from './frames';
export * from './limits';
