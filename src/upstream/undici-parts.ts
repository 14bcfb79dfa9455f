/**
 * The parts of undici docxy uses, loaded one by one: undici's index also loads fetch, WebSocket,
 * EventSource, its caches (SQLite included) and mock agents, none of which docxy uses, for
 * ~13 MiB more resident memory (measured: Node with node:http 45 MiB, +11 with these parts, +24
 * with the index). The package has no `exports` map, so these are its public files; the lockfile
 * pins them, and every upstream test fails at once if a new version moves them.
 *
 * Like the index, this gives Dispatcher its request/stream/pipeline/connect/upgrade methods.
 */
import Agent from 'undici/lib/dispatcher/agent.js';
import Dispatcher from 'undici/lib/dispatcher/dispatcher.js';
import api from 'undici/lib/api/index.js';
import buildConnector from 'undici/lib/core/connect.js';

Object.assign(Dispatcher.prototype, api);

export { Agent, buildConnector };
