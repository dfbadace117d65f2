// Which service takes a client: the first whose every given match key
// equals the client's startup parameter (or one of its list), else the
// default service.
import type { Config, ServiceConfig } from '../types/config.js';

/** The first service whose every given match key equals the client's startup parameter, else defaultService. */
export function matchService(
  config: Config,
  params: { user: string; database: string; applicationName: string },
): ServiceConfig | undefined {
  const hit = config.services.find(
    (s) => takes(s.match.user, params.user) && takes(s.match.database, params.database) && takes(s.match.applicationName, params.applicationName),
  );
  if (hit) return hit;
  return config.defaultService === undefined
    ? undefined
    : config.services.find((s) => s.name === config.defaultService);
}

function takes(key: string | readonly string[] | undefined, value: string): boolean {
  return key === undefined || (typeof key === 'string' ? key === value : key.includes(value));
}
