import { describe, expect, it } from 'vitest';
import { MemberTable, supersedes } from '../../src/gossip/members.js';

describe('SWIM membership rules', () => {
  it('orders updates by incarnation, then by gravity; decommission is final', () => {
    expect(supersedes({ name: 'a', state: 'suspect', incarnation: 0 }, { name: 'a', state: 'alive', incarnation: 0 })).toBe(true);
    expect(supersedes({ name: 'a', state: 'alive', incarnation: 0 }, { name: 'a', state: 'suspect', incarnation: 0 })).toBe(false);
    expect(supersedes({ name: 'a', state: 'alive', incarnation: 1 }, { name: 'a', state: 'dead', incarnation: 0 })).toBe(true);
    expect(supersedes({ name: 'a', state: 'dead', incarnation: 0 }, { name: 'a', state: 'alive', incarnation: 1 })).toBe(false);
    expect(supersedes({ name: 'a', state: 'alive', incarnation: 9 }, { name: 'a', state: 'decommissioned', incarnation: 0 })).toBe(false);
    expect(supersedes({ name: 'a', state: 'decommissioned', incarnation: 0 }, { name: 'a', state: 'alive', incarnation: 9 })).toBe(true);
  });

  it('suspects, then declares dead when the suspicion is not refuted in time', () => {
    let now = 0;
    const t = new MemberTable('r1', ['r1', 'r2', 'r3'], () => now);
    expect(t.suspect('r2')).toBe(true);
    expect(t.get('r2')!.state).toBe('suspect');
    now = 999;
    expect(t.expireSuspicions(1000)).toEqual([]);
    now = 1000;
    expect(t.expireSuspicions(1000)).toEqual(['r2']);
    expect(t.get('r2')!.state).toBe('dead');
  });

  it('a member told it is suspected refutes with a higher incarnation, which others accept', () => {
    const r2 = new MemberTable('r2', ['r1', 'r2']);
    expect(r2.apply({ name: 'r2', state: 'suspect', incarnation: 0 })).toBe(true);
    const refutation = r2.takeUpdates().find((u) => u.name === 'r2')!;
    expect(refutation).toEqual({ name: 'r2', state: 'alive', incarnation: 1 });
    const r1 = new MemberTable('r1', ['r1', 'r2']);
    r1.suspect('r2');
    expect(r1.apply(refutation)).toBe(true);
    expect(r1.get('r2')!.state).toBe('alive');
  });

  it('hearing directly from a dead member brings it back alive', () => {
    const t = new MemberTable('r1', ['r1', 'r2']);
    t.apply({ name: 'r2', state: 'dead', incarnation: 0 });
    t.heardFrom('r2');
    expect(t.get('r2')).toMatchObject({ state: 'alive', incarnation: 1 });
  });

  it('sends each update a bounded number of times, and always its own state', () => {
    const t = new MemberTable('r1', ['r1', 'r2'], Date.now, 2);
    t.suspect('r2');
    expect(t.takeUpdates().map((u) => u.name).sort()).toEqual(['r1', 'r2']);
    expect(t.takeUpdates().map((u) => u.name).sort()).toEqual(['r1', 'r2']);
    expect(t.takeUpdates().map((u) => u.name)).toEqual(['r1']);
  });

  it('leaves decommissioned members out of the active set', () => {
    const t = new MemberTable('r1', ['r1', 'r2', 'r3']);
    t.decommission('r3');
    expect(t.active().map((m) => m.name)).toEqual(['r1', 'r2']);
  });

  it('takes no decommission from the wire: a SWIM update saying so changes nothing', () => {
    const t = new MemberTable('r1', ['r1', 'r2', 'r3']);
    const before = t.list();
    expect(t.apply({ name: 'r2', state: 'decommissioned', incarnation: 99 })).toBe(false);
    expect(t.apply({ name: 'r1', state: 'decommissioned', incarnation: 99 })).toBe(false);
    expect(t.apply({ name: 'r2', state: 'gone' as never, incarnation: 1 })).toBe(false);
    expect(t.list()).toEqual(before);
    expect(t.active().map((m) => m.name)).toEqual(['r1', 'r2', 'r3']);
    // Nothing to pass on either.
    expect(t.takeUpdates()).toEqual([{ name: 'r1', state: 'alive', incarnation: 0 }]);
  });

  it('a decommission from the log is final and is not gossiped', () => {
    const t = new MemberTable('r1', ['r1', 'r2']);
    expect(t.decommission('r2')).toBe(true);
    expect(t.apply({ name: 'r2', state: 'alive', incarnation: 50 })).toBe(false);
    expect(t.get('r2')!.state).toBe('decommissioned');
    expect(t.takeUpdates().map((u) => u.name)).toEqual(['r1']);
  });
});
