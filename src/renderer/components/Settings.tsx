// Settings: the core this laptop is paired with (and a form to pair with one), the bandwidth cap for
// moves and the placement policy's main knobs. The form is checked with the agent's own schema
// (src/shared/config.ts), so each field's error shows next to it before anything is sent. config.json
// stays the source of truth: a valid edit on disk refreshes the form; an invalid one shows the banner
// and changes nothing here.
import { useState, type FormEvent } from 'react';
import { useController, useUi } from '../hooks.ts';
import { DEFAULT_POLICY_PARAMS } from '../../shared/placement.ts';
import { DEDUP_MODES } from '../../shared/migration.ts';
import { mergePatch, parseConfigFile, type ConfigFile, type ConfigReply, type PolicySettingKey } from '../../shared/config.ts';

interface Field {
  section: 'migration' | 'policy';
  name: string;
  label: string;
  unit: string;
  help: string;
  /** What an empty field means. */
  placeholder: string;
  /** A choice among these words (a select) instead of a number. */
  choices?: readonly string[];
}

const policyField = (name: PolicySettingKey, label: string, unit: string, help: string): Field => ({
  section: 'policy',
  name,
  label,
  unit,
  help,
  placeholder: `default ${DEFAULT_POLICY_PARAMS[name]}`,
});

const FIELDS: Field[] = [
  { section: 'migration', name: 'bandwidthCapMbit', label: 'Bandwidth cap', unit: 'Mbit/s', help: 'caps the memory stream of moves that set no cap of their own (the buttons, the policy)', placeholder: 'no cap' },
  {
    section: 'migration',
    name: 'dedup',
    label: 'Dedup',
    unit: 'memory stream',
    help: 'sends memory the other site already holds as references: auto uses it when the link, not the CPU, is the bottleneck (measured before each move)',
    placeholder: 'default (auto)',
    choices: DEDUP_MODES,
  },
  { section: 'migration', name: 'chunkStoreMiB', label: 'Dedup store', unit: 'MiB per VM', help: 'what each site keeps of each VM\'s memory for dedup, at most', placeholder: 'twice its RAM' },
  policyField('minDwellMs', 'Minimum stay', 'ms', 'after arriving anywhere, the VM stays at least this long before an automatic move'),
  policyField('costMargin', 'Gain margin', '×', 'move to the cloud only when the time saved beats the round trip\'s cost × this'),
  policyField('minConfidence', 'Minimum confidence', '0–1', 'a judgement of what the VM is doing counts only at or above this confidence'),
  policyField('minCrunchMs', 'Sustained crunch', 'ms', 'a crunch must have lasted this long before it may move the VM'),
  policyField('interactiveSustainMs', 'Sustained interaction', 'ms', 'interaction in the cloud must have lasted this long before the VM comes back'),
];

const keyOf = (field: Field): string => `${field.section}.${field.name}`;

function valueOf(settings: ConfigFile, field: Field): unknown {
  return (settings[field.section] as Record<string, unknown> | undefined)?.[field.name];
}

/** The settings from the file (the paired core is not one of them). */
function fileSettings(config: ConfigReply['config']): ConfigFile {
  const { core: _core, ...settings } = config;
  return settings;
}

/** The banner at the top of the page while config.json is invalid. */
export function ConfigBanner() {
  const error = useUi((s) => s.config?.error);
  if (error === undefined) return null;
  return (
    <div className="config-error" role="alert" data-testid="config-error">
      <strong>config.json is invalid:</strong> {error.message} — the last good config stays in force. Fix the file: it applies when you save it.
    </div>
  );
}

export function Settings() {
  const config = useUi((s) => s.config);
  return (
    <details className="panel settings" data-testid="settings">
      <summary data-testid="settings-toggle">Settings</summary>
      {config === undefined ? (
        <p className="muted">Waiting for the agent's settings…</p>
      ) : (
        <div className="settings-body">
          <CoreServer config={config} />
          {/* A new form whenever the settings in force change (a save, an edit of the file). */}
          <SettingsForm key={JSON.stringify(fileSettings(config.config))} settings={fileSettings(config.config)} path={config.path} fileInvalid={config.error !== undefined} />
        </div>
      )}
    </details>
  );
}

function CoreServer({ config }: { config: ConfigReply }) {
  const controller = useController();
  const connected = useUi((s) => s.status?.peer.connected ?? false);
  const [url, setUrl] = useState('');
  const [token, setToken] = useState('');
  const [fingerprint, setFingerprint] = useState('');
  const [pairing, setPairing] = useState(false);
  const core = config.config.core;

  const pair = async (event: FormEvent): Promise<void> => {
    event.preventDefault();
    setPairing(true);
    const paired = await controller.pair(url.trim(), token.trim(), fingerprint.trim() || undefined);
    setPairing(false);
    if (paired) setToken('');
  };

  return (
    <section className="settings-section">
      <h3>Core server</h3>
      <p data-testid="paired-core" data-url={core?.url ?? ''}>
        {core === undefined ? (
          <span className="muted">Not paired with a core.</span>
        ) : (
          <>
            Paired with <strong>{core.name ?? 'a core'}</strong> at <code>{core.url}</code> ({connected ? 'connected' : 'not connected'})
            {core.fingerprint && <span className="muted fingerprint"> {core.fingerprint}</span>}
          </>
        )}
      </p>
      <form className="pair-form" onSubmit={(e) => void pair(e)}>
        <label>
          URL <input data-testid="pair-url" placeholder="https://HOST:7443" value={url} onChange={(e) => setUrl(e.target.value)} />
        </label>
        <label>
          Token <input data-testid="pair-token" value={token} onChange={(e) => setToken(e.target.value)} />
        </label>
        <label>
          Fingerprint <input data-testid="pair-fingerprint" placeholder="optional (trusted on first use)" value={fingerprint} onChange={(e) => setFingerprint(e.target.value)} />
        </label>
        <button type="submit" data-testid="pair-submit" disabled={pairing || url.trim() === '' || token.trim() === ''}>
          {pairing ? 'Pairing…' : core === undefined ? 'Pair' : 'Pair with this core instead'}
        </button>
      </form>
      <p className="muted">The core prints the URL, token and fingerprint when it starts (or run <code>snowbird pair</code>).</p>
    </section>
  );
}

function SettingsForm({ settings, path, fileInvalid }: { settings: ConfigFile; path: string; fileInvalid: boolean }) {
  const controller = useController();
  const initial = Object.fromEntries(FIELDS.map((f) => {
    const value = valueOf(settings, f);
    return [keyOf(f), value === undefined ? '' : String(value)];
  }));
  const [drafts, setDrafts] = useState<Record<string, string>>(initial);
  const [saving, setSaving] = useState(false);

  // Only the fields the user changed; an emptied field removes the setting (back to its default).
  const changed = FIELDS.filter((f) => drafts[keyOf(f)] !== initial[keyOf(f)]);
  const patch: Record<string, Record<string, number | string | null>> = {};
  for (const field of changed) {
    const text = (drafts[keyOf(field)] ?? '').trim();
    (patch[field.section] ??= {})[field.name] = text === '' ? null : field.choices ? text : Number(text);
  }
  const checked = parseConfigFile(mergePatch(settings, patch));
  const fieldErrors = checked.ok ? {} : checked.fields;

  const save = async (event: FormEvent): Promise<void> => {
    event.preventDefault();
    setSaving(true);
    await controller.saveConfig(patch);
    setSaving(false);
  };

  return (
    <form className="settings-form" onSubmit={(e) => void save(e)}>
      <h3>Moves and placement</h3>
      <div className="settings-grid">
        {FIELDS.map((field) => {
          const key = keyOf(field);
          const error = fieldErrors[key];
          return (
            <label key={key} title={field.help} className={error ? 'invalid' : ''}>
              <span className="setting-label">
                {field.label} <small className="muted">({field.unit})</small>
              </span>
              {field.choices ? (
                <select data-testid={`setting-${key}`} value={drafts[key] ?? ''} aria-invalid={error !== undefined} onChange={(e) => setDrafts({ ...drafts, [key]: e.target.value })}>
                  <option value="">{field.placeholder}</option>
                  {field.choices.map((choice) => (
                    <option key={choice} value={choice}>
                      {choice}
                    </option>
                  ))}
                </select>
              ) : (
                <input
                  data-testid={`setting-${key}`}
                  inputMode="decimal"
                  placeholder={field.placeholder}
                  value={drafts[key] ?? ''}
                  aria-invalid={error !== undefined}
                  onChange={(e) => setDrafts({ ...drafts, [key]: e.target.value })}
                />
              )}
              {error && (
                <span className="field-error" data-testid={`setting-error-${key}`}>
                  {error}
                </span>
              )}
            </label>
          );
        })}
      </div>
      <div className="buttons">
        <button type="submit" data-testid="settings-save" disabled={saving || fileInvalid || changed.length === 0 || !checked.ok}>
          {saving ? 'Saving…' : 'Save'}
        </button>
        {changed.length > 0 && (
          <button type="button" onClick={() => setDrafts(initial)}>
            Undo changes
          </button>
        )}
      </div>
      <p className="muted">
        Saved to <code>{path}</code>, which you may also edit: a valid edit applies at once.
        {fileInvalid && ' Saving here waits until the file on disk is valid again.'}
      </p>
    </form>
  );
}
