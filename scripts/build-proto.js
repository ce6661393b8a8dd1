#!/usr/bin/env node
// Generates protobufjs static code for protocol/waymark.proto (build step, before tsc):
// protocol/generated/waymark.js + .d.ts for the type checker, and a copy of the .js in
// dist/protocol/generated/ where the compiled code requires it. int64 fields decode as
// JavaScript numbers (--force-number): offsets and times stay below 2^53.
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const bin = (name) => path.join(root, 'node_modules', '.bin', name);
const out = path.join(root, 'protocol', 'generated');
fs.mkdirSync(out, { recursive: true });
const js = path.join(out, 'waymark.js');
execFileSync(bin('pbjs'), ['-t', 'static-module', '-w', 'commonjs', '--force-number', '--no-verify', '--no-delimited', '--no-convert', '-o', js, path.join(root, 'protocol', 'waymark.proto')], { stdio: 'inherit' });
execFileSync(bin('pbts'), ['-o', path.join(out, 'waymark.d.ts'), js], { stdio: 'inherit' });
const distOut = path.join(root, 'dist', 'protocol', 'generated');
fs.mkdirSync(distOut, { recursive: true });
fs.copyFileSync(js, path.join(distOut, 'waymark.js'));
