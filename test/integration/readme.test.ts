// The README's commands stay true: every command in its ```sh blocks runs, in order, as a new user
// runs them, on a scratch data directory ($SNOWBIRD_DATA) and settings file ($SNOWBIRD_CONFIG), and
// must exit as documented. `npm start` runs in the background the whole time (without a display it
// prints the app's URL instead of opening it); an agent started by hand while it runs must refuse (one
// agent per data directory, as the README says); `vm stop` runs last (the README lists it among the
// first commands, for after the rest). Skipped, with the reason: the machine's setup (apt-get, npm
// ci: .ci/run does them), `npm test` (this is it) and an interactive VNC viewer.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from '../support/fixtures.ts';

interface Documented {
  line: string;
  command: string;
}

const SKIPPED: { pattern: RegExp; why: string }[] = [
  { pattern: /^(sudo )?apt-get /, why: 'system packages: .ci/run installs them' },
  { pattern: /^npm ci\b/, why: 'the dependencies: .ci/run installs them' },
  { pattern: /^npm test\b/, why: 'the test suite: this test is part of it' },
  { pattern: /^gvncviewer\b/, why: 'an interactive VNC viewer (display-novnc.test.ts drives a real third-party client)' },
];

/** Every command line of the README's sh blocks, continuation lines joined, comments dropped. */
function documentedCommands(readme: string): Documented[] {
  const commands: Documented[] = [];
  for (const block of readme.matchAll(/```sh\n([\s\S]*?)```/g)) {
    let pending = '';
    for (const raw of (block[1] ?? '').split('\n')) {
      const line = raw.replace(/\s+#.*$/, '').replace(/^#.*$/, '').trimEnd();
      if (line.endsWith('\\')) {
        pending += `${line.slice(0, -1).trim()} `;
        continue;
      }
      const command = `${pending}${line.trim()}`.trim();
      pending = '';
      if (command !== '') commands.push({ line: raw.trim(), command });
    }
  }
  return commands;
}

describe('the README\'s commands', { timeout: 20 * 60_000 }, () => {
  let scratch: string;
  let env: NodeJS.ProcessEnv;
  let start: ChildProcess | undefined;
  let startOutput = '';

  before(async () => {
    scratch = await mkdtemp(join(tmpdir(), 'sb-readme-'));
    // `bin/snowbird` as the README writes it, from a directory where the commands' own files land.
    await symlink(join(REPO_ROOT, 'bin'), join(scratch, 'bin'));
    const { DISPLAY: _display, WAYLAND_DISPLAY: _wayland, ...rest } = process.env;
    env = { ...rest, SNOWBIRD_DATA: join(scratch, 'data'), SNOWBIRD_CONFIG: join(scratch, 'config.json') };
  });

  after(async () => {
    // npm start's process group, if anything of it still runs (a failed test never sent its Ctrl-C).
    if (start?.pid !== undefined) {
      try {
        process.kill(-start.pid, 'SIGKILL');
      } catch {
        // the group is gone
      }
    }
    // Whatever still runs under the scratch directory (QEMU is daemonized): its pid files say.
    for (const dir of [join(scratch, 'data'), join(scratch, 'data', 'embedded-core')]) {
      for (const vm of await readdir(join(dir, 'vms')).catch(() => [])) {
        const pid = Number.parseInt(await readFile(join(dir, 'vms', vm, 'qemu.pid'), 'utf8').catch(() => ''), 10);
        if (pid > 0) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // gone
          }
        }
      }
    }
    await rm(scratch, { recursive: true, force: true });
  });

  /** Runs one documented command in a shell, as a user types it. */
  function run(command: string, timeoutMs = 5 * 60_000): Promise<{ code: number | null; output: string }> {
    const cwd = command.startsWith('npm ') ? REPO_ROOT : scratch;
    return new Promise((done) => {
      const child = spawn('bash', ['-c', command], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
      let output = '';
      child.stdout.on('data', (c: Buffer) => (output += c.toString()));
      child.stderr.on('data', (c: Buffer) => (output += c.toString()));
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      child.on('close', (code) => {
        clearTimeout(timer);
        done({ code, output });
      });
    });
  }

  test('each command exits as documented', async () => {
    const commands = documentedCommands(await readFile(join(REPO_ROOT, 'README.md'), 'utf8'));
    assert.ok(commands.some((c) => c.command === 'npm start') && commands.some((c) => c.command === 'npm test'), 'the README states the two commands');
    const stops = commands.filter((c) => / vm stop /.test(` ${c.command} `));
    const ran: string[] = [];
    for (const { command, line } of [...commands.filter((c) => !stops.includes(c)), ...stops]) {
      const skipped = SKIPPED.find((s) => s.pattern.test(command));
      if (skipped) {
        ran.push(`skipped: ${command} (${skipped.why})`);
        continue;
      }
      if (command === 'npm start') {
        // Its own process group, as in a terminal: Ctrl-C below goes to npm and the agent alike.
        start = spawn('npm', ['start'], { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
        start.stdout?.on('data', (c: Buffer) => (startOutput += c.toString()));
        start.stderr?.on('data', (c: Buffer) => (startOutput += c.toString()));
        const deadline = Date.now() + 5 * 60_000;
        while (!/^http:\/\/127\.0\.0\.1:\d+\/\?token=/m.test(startOutput) && start.exitCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 250));
        assert.match(startOutput, /^http:\/\/127\.0\.0\.1:\d+\/\?token=/m, `npm start printed no URL:\n${startOutput}`);
        ran.push(command);
        continue;
      }
      if (command.endsWith('&')) {
        // An agent by hand while npm start's runs: refused, naming the one that runs.
        const r = await run(command.slice(0, -1).trim(), 60_000);
        assert.equal(r.code, 1, `${line}\n${r.output}`);
        assert.match(r.output, /another snowbird agent \(pid \d+\) already runs on/);
        ran.push(`${command} (refused: npm start's agent runs)`);
        continue;
      }
      const r = await run(command);
      assert.equal(r.code, 0, `README: ${line}\nexit ${r.code}:\n${r.output}\n--- npm start:\n${startOutput.slice(-3000)}`);
      ran.push(command);
    }
    console.log(ran.join('\n'));
    // Ctrl-C on npm start: it says where the VM is, truthfully (stopped by `vm stop` above).
    assert.ok(start !== undefined);
    // 'close': npm may exit first; the agent's last words come on the same pipes.
    const exited = new Promise((resolve) => start?.once('close', resolve));
    process.kill(-(start.pid ?? 0), 'SIGINT');
    await exited;
    assert.match(startOutput, /the agent stopped; VM "demo" is not running/);
  });
});
