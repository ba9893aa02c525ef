'use strict';
// The packed package works outside the repository: `npm pack` ships the protos, and the
// README's example runs from an installed copy against a real `promptbo serve`.

const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { after, before, test } = require('node:test');

const { PromptboServer } = require('./support/server');

const PACKAGE_DIR = path.join(__dirname, '..');

/** The first ```js block of the package's README. */
function readmeExample() {
  const readme = fs.readFileSync(path.join(PACKAGE_DIR, 'README.md'), 'utf8');
  const match = readme.match(/```js\n([\s\S]*?)```/);
  assert.ok(match, 'README.md has a ```js block');
  return match[1];
}

let server;
let dir;

before(async () => {
  server = await PromptboServer.start();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'promptbo-pack-'));
});

after(async () => {
  if (server) await server.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test('npm pack ships the protos and the README example runs from the installed copy',
  { timeout: 120000 }, () => {
    const out = execFileSync('npm', ['pack', '--json', '--pack-destination', dir],
      { cwd: PACKAGE_DIR, encoding: 'utf8' });
    const [info] = JSON.parse(out);
    const files = info.files.map((f) => f.path);
    assert.ok(files.includes('protos/promptbo/v1/optimizer_service.proto'), files.join(' '));
    assert.ok(files.includes('protos/promptbo/v1/resources.proto'));

    // Install: unpack into node_modules/@promptbo/client; its dependencies from ours.
    const modules = path.join(dir, 'node_modules');
    const installed = path.join(modules, '@promptbo', 'client');
    fs.mkdirSync(installed, { recursive: true });
    execFileSync('tar', ['-xzf', path.join(dir, info.filename), '-C', installed,
      '--strip-components=1']);
    for (const dep of fs.readdirSync(path.join(PACKAGE_DIR, 'node_modules'))) {
      if (!dep.startsWith('.')) {
        fs.symlinkSync(path.join(PACKAGE_DIR, 'node_modules', dep), path.join(modules, dep));
      }
    }
    fs.writeFileSync(path.join(dir, 'example.js'), readmeExample());
    const env = { ...process.env, PROMPTBO_ADDRESS: server.address };
    delete env.PROMPTBO_PROTO_DIR;
    const printed = execFileSync('node', ['example.js'], { cwd: dir, env, encoding: 'utf8' });
    assert.match(printed, /^best trial \d+: -?\d/);
  });
