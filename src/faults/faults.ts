/**
 * Fault hooks for tests. They do nothing unless the sidecar runs with `testFaults: true`
 * (CHORUS_TEST_FAULTS=1), and only tests arm them, through POST /_chorus/faults.
 */
export interface FaultSettings {
  /** Flip one byte in each of the next N part files this replica serves to a peer. */
  corruptServedFiles: number;
}

export class Faults {
  private settings: FaultSettings = { corruptServedFiles: 0 };

  constructor(readonly enabled: boolean) {}

  arm(update: Partial<FaultSettings>): FaultSettings {
    if (!this.enabled) return this.settings;
    if (update.corruptServedFiles !== undefined) this.settings.corruptServedFiles = Math.max(0, Math.floor(update.corruptServedFiles));
    return { ...this.settings };
  }

  /** True when the file about to be served should be corrupted; consumes one. */
  takeCorruptServedFile(): boolean {
    if (!this.enabled || this.settings.corruptServedFiles <= 0) return false;
    this.settings.corruptServedFiles--;
    return true;
  }
}
