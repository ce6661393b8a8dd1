#!/usr/bin/env node
'use strict';
// Thin launcher: the CLI lives in dist/tools/cli.js, built by `npm install` (prepare) or `npm run build`.
let cli;
try {
  cli = require('../dist/tools/cli.js');
} catch (err) {
  if (err && err.code === 'MODULE_NOT_FOUND' && /dist[\\/]tools[\\/]cli/.test(String(err.message))) {
    process.stderr.write('waymark: not built yet; run `npm install` (or `npm run build`) first\n');
    process.exit(1);
  }
  throw err;
}
cli.main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err) => { process.stderr.write(`waymark: ${err && err.stack ? err.stack : err}\n`); process.exitCode = 1; },
);
