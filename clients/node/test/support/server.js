'use strict';
/**
 * Runs a real `promptbo serve` for tests: a subprocess on a free port (--port 0 --port-file)
 * over a temporary SQLite file. The executable is $PROMPTBO_BIN (default `promptbo` on PATH).
 */

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const START_TIMEOUT_MS = 60000;
const STOP_TIMEOUT_MS = 15000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class PromptboServer {
  /**
   * Starts a server and resolves once it has written its port.
   * @param {{authToken?: string}} [options]
   */
  static async start(options = {}) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'promptbo-node-'));
    const portFile = path.join(dir, 'port');
    const args = [
      'serve',
      '--storage', `sqlite:///${path.join(dir, 'studies.db')}`,
      '--host', '127.0.0.1',
      '--port', '0',
      '--port-file', portFile,
    ];
    if (options.authToken) {
      const tokenFile = path.join(dir, 'token');
      fs.writeFileSync(tokenFile, options.authToken, { mode: 0o600 });
      args.push('--auth-token-file', tokenFile);
    }
    const bin = process.env.PROMPTBO_BIN || 'promptbo';
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const server = new PromptboServer(child, dir);
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (!fs.existsSync(portFile)) {
      if (server.exited) {
        server.cleanup();
        throw new Error(`${bin} serve exited with ${server.exitCode}:\n${server.log}`);
      }
      if (Date.now() > deadline) {
        await server.stop();
        throw new Error(`${bin} serve wrote no port within ${START_TIMEOUT_MS} ms:\n${server.log}`);
      }
      await sleep(100);
    }
    server.port = Number(fs.readFileSync(portFile, 'utf8').trim());
    server.address = `127.0.0.1:${server.port}`;
    return server;
  }

  constructor(child, dir) {
    this.child = child;
    this.dir = dir;
    this.log = '';
    this.exited = false;
    this.exitCode = null;
    const append = (chunk) => {
      this.log = (this.log + chunk).slice(-20000);
    };
    child.stdout.on('data', append);
    child.stderr.on('data', append);
    child.on('error', (err) => append(`spawn failed: ${err.message}\n`));
    this._exit = new Promise((resolve) => {
      child.on('close', (code, signal) => {
        this.exited = true;
        this.exitCode = code ?? signal;
        resolve(this.exitCode);
      });
    });
    // A test runner that dies must not leave the server behind.
    this._killOnExit = () => child.kill('SIGKILL');
    process.once('exit', this._killOnExit);
  }

  /** SIGTERM, then SIGKILL after STOP_TIMEOUT_MS; resolves with the exit code or signal. */
  async stop() {
    if (!this.exited) {
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), STOP_TIMEOUT_MS);
      await this._exit;
      clearTimeout(timer);
    }
    this.cleanup();
    return this.exitCode;
  }

  cleanup() {
    process.removeListener('exit', this._killOnExit);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

module.exports = { PromptboServer };
