import pino, { type Logger } from 'pino';

export type { Logger };

/** The only place a root logger is made; everything else receives a child of it. */
export function createLogger(opts: { level: string; replica?: string; shard?: string }): Logger {
  return pino({
    level: opts.level,
    base: { replica: opts.replica, shard: opts.shard },
    timestamp: pino.stdTimeFunctions.isoTime,
  });
}

export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
