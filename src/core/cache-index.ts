import type { SharedValues } from '../coordination/coordinator.ts';
import type { Digest } from '../oci/digest.ts';
import type { StorageDriver } from '../storage/storage-driver.ts';

/** What docxy knows about a tag: the digest it last resolved to. */
export interface TagEntry {
  digest: string;
  mediaType: string;
  size: number;
  /** When the upstream last confirmed this digest (ms since epoch). */
  checkedAt: number;
}

/** Whether every user of this mirror may read a repository (what docxy's own identity could). */
export interface Visibility {
  public: boolean;
  checkedAt: number;
}

const MEMORY_ENTRIES = 10_000;
/** How long tags and visibility stay in the replicas' shared store (their own checkedAt says how fresh they are). */
const SHARED_TTL_MS = 24 * 3600_000;

export interface CacheIndexOptions {
  /**
   * The other replicas (coordination.redis): tags and visibility are read there first and
   * written there too, so a tag one replica resolved is fresh for all (and no replica trusts a
   * copy in its own memory that another has since replaced).
   */
  shared?: SharedValues | undefined;
}

/**
 * The cache's metadata, persisted next to the content so it survives restarts: per upstream and
 * repository, tags (tag -> digest), links (this digest was served as part of this repository
 * upstream) and visibility. Content itself is stored once by digest and shared; links are what
 * stop a private blob from being served through another repository's name.
 *
 * Layout (repository names cannot contain a `_`-led component, so these never collide):
 *   repositories/<upstream>/<repository>/_tags/<tag>
 *   repositories/<upstream>/<repository>/_links/<algorithm>/<hex>
 *   repositories/<upstream>/<repository>/_visibility
 *
 * Links never change once written, so every replica may keep them in memory; tags and
 * visibility do change, and with a shared store they are kept there instead of in memory.
 */
export class CacheIndex {
  private readonly driver: StorageDriver;
  private readonly memory = new Map<string, unknown>();
  private readonly shared: SharedValues | undefined;

  constructor(driver: StorageDriver, options: CacheIndexOptions = {}) {
    this.driver = driver;
    this.shared = options.shared;
  }

  async getTag(upstream: string, repository: string, tag: string): Promise<TagEntry | undefined> {
    return this.readChanging<TagEntry>(`${base(upstream, repository)}/_tags/${tag}`);
  }

  async putTag(upstream: string, repository: string, tag: string, entry: TagEntry): Promise<void> {
    await this.writeChanging(`${base(upstream, repository)}/_tags/${tag}`, entry);
  }

  async deleteTag(upstream: string, repository: string, tag: string): Promise<void> {
    const key = `${base(upstream, repository)}/_tags/${tag}`;
    this.memory.delete(key);
    await this.shared?.delete(`index:${key}`);
    await this.driver.delete(key);
  }

  async hasLink(upstream: string, repository: string, digest: Digest): Promise<boolean> {
    return (await this.readJson<{ at: number }>(linkKey(upstream, repository, digest))) !== undefined;
  }

  async link(upstream: string, repository: string, digest: Digest): Promise<void> {
    const key = linkKey(upstream, repository, digest);
    if (this.memory.has(key)) return;
    await this.writeJson(key, { at: Date.now() });
  }

  async getVisibility(upstream: string, repository: string): Promise<Visibility | undefined> {
    return this.readChanging<Visibility>(`${base(upstream, repository)}/_visibility`);
  }

  async setVisibility(upstream: string, repository: string, isPublic: boolean): Promise<void> {
    await this.writeChanging(`${base(upstream, repository)}/_visibility`, { public: isPublic, checkedAt: Date.now() });
  }

  /** Every tag entry, for `docxy cache ls`. */
  async *tags(): AsyncIterable<{ upstream: string; repository: string; tag: string; entry: TagEntry }> {
    for await (const item of this.driver.list('repositories/')) {
      const match = /^repositories\/([^/]+)\/(.+)\/_tags\/([^/]+)$/.exec(item.key);
      if (!match) continue;
      const entry = await this.readJson<TagEntry>(item.key);
      if (entry) yield { upstream: match[1]!, repository: match[2]!, tag: match[3]!, entry };
    }
  }

  /** A tag or visibility: from the shared store when there is one (filled from storage on a miss), else as any key. */
  private async readChanging<T>(key: string): Promise<T | undefined> {
    if (!this.shared) return this.readJson<T>(key);
    const text = await this.shared.get(`index:${key}`);
    if (text !== undefined) {
      try {
        return JSON.parse(text) as T;
      } catch {
        // unreadable: as good as none; storage has it
      }
    }
    const data = await this.driver.readAll(key);
    if (!data) return undefined;
    try {
      const value = JSON.parse(data.toString('utf8')) as T;
      await this.shared.set(`index:${key}`, data.toString('utf8'), SHARED_TTL_MS);
      return value;
    } catch {
      return undefined;
    }
  }

  private async writeChanging(key: string, value: unknown): Promise<void> {
    if (!this.shared) return this.writeJson(key, value);
    const text = JSON.stringify(value);
    await this.driver.writeAll(key, text);
    await this.shared.set(`index:${key}`, text, SHARED_TTL_MS);
  }

  private async readJson<T>(key: string): Promise<T | undefined> {
    if (this.memory.has(key)) return this.memory.get(key) as T;
    const data = await this.driver.readAll(key);
    if (!data) return undefined;
    try {
      const value = JSON.parse(data.toString('utf8')) as T;
      this.remember(key, value);
      return value;
    } catch {
      return undefined; // unreadable metadata is as good as none
    }
  }

  private async writeJson(key: string, value: unknown): Promise<void> {
    await this.driver.writeAll(key, JSON.stringify(value));
    this.remember(key, value);
  }

  private remember(key: string, value: unknown): void {
    if (this.memory.size >= MEMORY_ENTRIES) this.memory.delete(this.memory.keys().next().value!);
    this.memory.set(key, value);
  }
}

function base(upstream: string, repository: string): string {
  return `repositories/${upstream}/${repository}`;
}

function linkKey(upstream: string, repository: string, digest: Digest): string {
  return `${base(upstream, repository)}/_links/${digest.algorithm}/${digest.hex}`;
}
