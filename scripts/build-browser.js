#!/usr/bin/env node
// Bundles the SDK for browsers (dist/browser/waymark.js, global `Waymark`). Node-only
// modules (the ws transport, lz4-napi, the native xxh64) are left out: in a browser the SDK
// uses the global WebSocket, sends uncompressed batches and hashes in WebAssembly.
'use strict';
const path = require('node:path');
const esbuild = require('esbuild');

const root = path.join(__dirname, '..');
esbuild
  .build({
    entryPoints: [path.join(root, 'sdk', 'index.ts')],
    bundle: true,
    format: 'iife',
    globalName: 'Waymark',
    platform: 'browser',
    target: ['es2022'],
    external: ['ws', 'lz4-napi', '@node-rs/xxhash'],
    outfile: path.join(root, 'dist', 'browser', 'waymark.js'),
    logLevel: 'warning',
  })
  .catch(() => process.exit(1));
