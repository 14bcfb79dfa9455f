import { pino, type Logger, type LoggerOptions, type DestinationStream } from 'pino';

export type { Logger };

/**
 * Paths pino censors wherever they appear. docxy never logs headers or bodies on purpose; this
 * is the guard for the day someone does.
 */
export const REDACT_PATHS = [
  'authorization',
  'password',
  'token',
  'access_token',
  'refresh_token',
  '*.authorization',
  '*.Authorization',
  '*.password',
  '*.token',
  '*.access_token',
  '*.refresh_token',
  'headers.authorization',
  'req.headers.authorization',
  'credentials',
  '*.credentials',
];

export function createLogger(level: string, destination?: DestinationStream): Logger {
  const options: LoggerOptions = {
    level,
    base: { service: 'docxy' },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    formatters: { level: (label) => ({ level: label }) },
  };
  return destination ? pino(options, destination) : pino(options);
}
