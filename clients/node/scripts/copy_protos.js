'use strict';
// Runs before `npm pack`/`npm publish`: copies the repository's .proto files into protos/ so
// that the package works outside the repository. protos/ is not checked in.

const fs = require('node:fs');
const path = require('node:path');

const source = path.resolve(__dirname, '..', '..', '..', 'protos', 'promptbo', 'v1');
const target = path.resolve(__dirname, '..', 'protos', 'promptbo', 'v1');
fs.rmSync(path.resolve(__dirname, '..', 'protos'), { recursive: true, force: true });
fs.mkdirSync(target, { recursive: true });
for (const name of fs.readdirSync(source).filter((f) => f.endsWith('.proto'))) {
  fs.copyFileSync(path.join(source, name), path.join(target, name));
}
