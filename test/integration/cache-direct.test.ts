// The pull-through cache suites (single-flight fan-out, ranges during a fill, resume, wrong bytes,
// a client leaving) and the full-disk suite once more, with every blob of 1 MiB or more written
// with direct I/O (storage.directWriteMinMiB: 1, DOCXY_TEST_STORAGE=direct in
// test/helpers/docxy-app.ts): the path the default config takes for blobs of 128 MiB or more.
process.env.DOCXY_TEST_STORAGE = 'direct';
await import('./cache.test.ts');
await import('./hardening-disk.test.ts');
