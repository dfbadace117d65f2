// Which service takes a client: the first whose every given match key
// equals the client's startup parameter, else the default service.
import type { Config, ServiceConfig } from '../types/config.js';

/** The first service whose every given match key equals the client's startup parameter, else defaultService. */
export function matchService(
  config: Config,
  params: { user: string; database: string; applicationName: string },
): ServiceConfig | undefined {
  const hit = config.services.find(
    (s) =>
      (s.match.user === undefined || s.match.user === params.user) &&
      (s.match.database === undefined || s.match.database === params.database) &&
      (s.match.applicationName === undefined || s.match.applicationName === params.applicationName),
  );
  if (hit) return hit;
  return config.defaultService === undefined
    ? undefined
    : config.services.find((s) => s.name === config.defaultService);
}
