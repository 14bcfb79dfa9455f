const globCache = new Map<string, RegExp>();

/** A repository glob as a RegExp: `*` within a path segment, `**` across segments, the rest literal. */
export function globToRegExp(glob: string): RegExp {
  let pattern = globCache.get(glob);
  if (!pattern) {
    const source = glob
      .split('**')
      .map((part) => part.split('*').map((text) => text.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('[^/]*'))
      .join('.*');
    pattern = new RegExp(`^${source}$`);
    globCache.set(glob, pattern);
  }
  return pattern;
}
