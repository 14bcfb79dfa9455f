/**
 * The `egress` section a docxy config needs to follow the test upstreams' redirects to their
 * "CDN": those servers listen on loopback and speak plain http, both of which docxy refuses by
 * default (a redirect may lead only to https and to no internal address).
 */
export const LOOPBACK_EGRESS = { allowPrivate: ['127.0.0.0/8', '::1/128'], allowHttpRedirects: true };
