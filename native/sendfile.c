// docxy's sendfile engine: a Node-API addon that sends a file's bytes to a TCP socket with the
// kernel's sendfile(2), on a thread of its own, so that the bytes never pass through JavaScript
// (nor through user space at all). One thread serves every transfer: it sends until a socket is
// full, then waits for it in its own epoll set, as nginx's workers do.
//
// JavaScript keeps every decision (what to send, to whom, the HTTP headers before it) and tells
// the engine only "these bytes of this file to that socket". The engine works on duplicates of
// both descriptors, made when a transfer starts: Node may close its own (a client that left)
// while a transfer runs, and the number may be reused for another connection at once; a duplicate
// still names the socket it was made from, so no byte can ever go to another client.
//
// API (all on the main thread):
//   start(socketFd, fileFd, offset, length, callback) -> id
//     callback(errno, sent) once, on the main thread: errno 0 when `length` bytes were sent,
//     else the error (ECANCELED after cancel(), ENODATA when the file ended early).
//   cancel(id)      stops a transfer (its callback still comes, with ECANCELED unless it ended)
//   sent(id)        bytes sent so far (0 once it ended)
//
// And two calls that have nothing to do with sendfile but need C: trimHeap() runs glibc's
// malloc_trim(0), which gives the free pages inside malloc's arenas back to the system (free()
// only gives back the top of an arena): true when it released memory, undefined without glibc.
// acceptPending(listenFd, max) accepts the connections waiting in a listening socket's queue, up
// to `max`, and returns their descriptors (non-blocking, close-on-exec): libuv accepts one
// connection per turn of its loop, so a burst of clients arriving while the loop is busy would
// be taken in one per turn (src/http/accept-drain.ts).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <node_api.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct job {
  uint32_t id;
  int sock;            /* duplicate, owned */
  int file;            /* duplicate, owned */
  off_t offset;
  int64_t remaining;
  int64_t sent;        /* read by sent() on the main thread: under the lock */
  int error;
  int cancelled;       /* set under the lock */
  int waiting;         /* registered in epoll, waiting for room in the socket */
  int pumped;          /* the engine sent its first bytes (or ended it) */
  int ready;           /* in the ready list: it had room left when its turn ended */
  struct job *ready_next;
  napi_ref callback;   /* created and deleted on the main thread */
  struct job *next;    /* in the incoming list or the active list */
} job;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static job *incoming = NULL;  /* started, not yet seen by the engine (under the lock) */
static job *active = NULL;    /* the engine's own (the engine thread only, but sent() reads under the lock) */
static job *ready = NULL;     /* jobs whose turn ended with room left in their socket (the engine thread only) */
static int epoll_fd = -1;
static int wake_fd = -1;
static uint32_t next_id = 1;
static napi_threadsafe_function done_fn = NULL;
static int running = 0;       /* transfers started and not yet reported (main thread) */
static int started = 0;

static void wake(void) {
  uint64_t one = 1;
  ssize_t ignored = write(wake_fd, &one, sizeof one);
  (void)ignored;
}

/* Ends a transfer: out of epoll and the active list, descriptors closed, reported to JavaScript. */
static void finish(job *j, int error) {
  if (j->waiting) epoll_ctl(epoll_fd, EPOLL_CTL_DEL, j->sock, NULL);
  if (j->ready) {
    for (job **p = &ready; *p; p = &(*p)->ready_next) {
      if (*p == j) {
        *p = j->ready_next;
        break;
      }
    }
  }
  pthread_mutex_lock(&lock);
  for (job **p = &active; *p; p = &(*p)->next) {
    if (*p == j) {
      *p = j->next;
      break;
    }
  }
  pthread_mutex_unlock(&lock);
  close(j->sock);
  close(j->file);
  j->error = error;
  napi_call_threadsafe_function(done_fn, j, napi_tsfn_blocking);
}

/* Bytes one transfer may send before the others get their turn: a fast reader frees room in its
   socket as fast as sendfile fills it, and would hold the thread for its whole transfer. */
#define TURN_BYTES (4 << 20)

/* Sends until the transfer is done, the socket is full (then it waits for room in epoll), or its
   turn is over (then it goes to the ready list, to go on after the others). */
static void pump(job *j) {
  int64_t turn = 0;
  while (j->remaining > 0) {
    if (turn >= TURN_BYTES) {
      if (!j->ready) {
        j->ready = 1;
        j->ready_next = NULL;
        job **tail = &ready;
        while (*tail) tail = &(*tail)->ready_next;
        *tail = j;
      }
      return;
    }
    size_t count = j->remaining > 0x7ffff000 ? 0x7ffff000 : (size_t)j->remaining;
    ssize_t n = sendfile(j->sock, j->file, &j->offset, count);
    if (n > 0) {
      pthread_mutex_lock(&lock);
      j->sent += n;
      pthread_mutex_unlock(&lock);
      j->remaining -= n;
      turn += n;
      continue;
    }
    if (n == 0) return finish(j, ENODATA);
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {
      if (!j->waiting) {
        struct epoll_event event = {.events = EPOLLOUT | EPOLLET, .data = {.ptr = j}};
        if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, j->sock, &event) != 0) return finish(j, errno);
        j->waiting = 1;
        /* Room may have come between the sendfile and the registration: edge-triggered, that
           edge would be lost; ADD reports a socket that is writable already, so go round. */
      }
      return;
    }
    return finish(j, errno);
  }
  finish(j, 0);
}

/* Takes in the transfers started since the last wake-up and ends the cancelled ones. */
static void take_in(void) {
  uint64_t count;
  ssize_t ignored = read(wake_fd, &count, sizeof count);
  (void)ignored;
  pthread_mutex_lock(&lock);
  job *fresh = incoming;
  incoming = NULL;
  while (fresh) {
    job *j = fresh;
    fresh = fresh->next;
    j->next = active;
    active = j;
  }
  pthread_mutex_unlock(&lock);
  for (;;) {
    job *cancelled = NULL;
    pthread_mutex_lock(&lock);
    for (job *j = active; j && !cancelled; j = j->next) if (j->cancelled) cancelled = j;
    pthread_mutex_unlock(&lock);
    if (!cancelled) break;
    finish(cancelled, ECANCELED);
  }
  /* The new ones (not waiting yet, not cancelled): send what fits. A pump may end its job (and
     take it out of the list), so the list is walked again from its start each time. */
  for (;;) {
    job *fresh_job = NULL;
    pthread_mutex_lock(&lock);
    for (job *j = active; j && !fresh_job; j = j->next) if (!j->waiting && !j->pumped) fresh_job = j;
    pthread_mutex_unlock(&lock);
    if (!fresh_job) break;
    fresh_job->pumped = 1;
    pump(fresh_job);
  }
}

static void *engine(void *unused) {
  (void)unused;
  struct epoll_event events[64];
  for (;;) {
    int n = epoll_wait(epoll_fd, events, 64, ready ? 0 : -1);
    if (n < 0) continue; /* EINTR */
    /* The sockets first, the wake-up last: taking in may end a job (cancelled) whose event is
       in this same batch, and its memory goes once JavaScript heard of it. */
    int woken = 0;
    for (int i = 0; i < n; i++) {
      if (events[i].data.ptr) pump(events[i].data.ptr);
      else woken = 1;
    }
    if (woken) take_in();
    /* The transfers whose turn ended, each once, in order (a pump may put one back at the end). */
    job *turns = ready;
    ready = NULL;
    while (turns) {
      job *j = turns;
      turns = turns->ready_next;
      j->ready = 0;
      pump(j);
    }
  }
  return NULL;
}

/* On the main thread: the transfer's callback, then the job goes. */
static void report(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)js_cb;
  (void)context;
  job *j = data;
  if (env != NULL) {
    napi_value callback, global, argv[2];
    if (napi_get_reference_value(env, j->callback, &callback) == napi_ok && napi_get_global(env, &global) == napi_ok) {
      napi_create_int32(env, j->error, &argv[0]);
      napi_create_double(env, (double)j->sent, &argv[1]);
      napi_call_function(env, global, callback, 2, argv, NULL);
    }
    napi_delete_reference(env, j->callback);
    if (--running == 0) napi_unref_threadsafe_function(env, done_fn);
  }
  free(j);
}

static napi_value throw_errno(napi_env env, const char *what, int error) {
  char message[160];
  snprintf(message, sizeof message, "%s: %s", what, strerror(error));
  napi_throw_error(env, NULL, message);
  return NULL;
}

static int ensure_started(napi_env env) {
  if (started) return 0;
  epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd < 0) return errno;
  wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd < 0) return errno;
  struct epoll_event event = {.events = EPOLLIN, .data = {.ptr = NULL}};
  if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, wake_fd, &event) != 0) return errno;
  napi_value name;
  napi_create_string_utf8(env, "docxy sendfile", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, NULL, NULL, NULL, report, &done_fn) != napi_ok) return EINVAL;
  napi_unref_threadsafe_function(env, done_fn);
  /* Signals stay with Node's main thread. */
  sigset_t all, previous;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &previous);
  pthread_t thread;
  int error = pthread_create(&thread, NULL, engine, NULL);
  pthread_sigmask(SIG_SETMASK, &previous, NULL);
  if (error) return error;
  pthread_setname_np(thread, "docxy-sendfile");
  pthread_detach(thread);
  started = 1;
  return 0;
}

static napi_value start(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t sock, file;
  int64_t offset, length;
  napi_valuetype type;
  if (argc < 5 || napi_get_value_int32(env, argv[0], &sock) != napi_ok || napi_get_value_int32(env, argv[1], &file) != napi_ok ||
      napi_get_value_int64(env, argv[2], &offset) != napi_ok || napi_get_value_int64(env, argv[3], &length) != napi_ok ||
      napi_typeof(env, argv[4], &type) != napi_ok || type != napi_function || offset < 0 || length < 0) {
    napi_throw_type_error(env, NULL, "start(socketFd, fileFd, offset, length, callback)");
    return NULL;
  }
  /* Only a non-blocking stream socket: a blocking one would hold the engine's one thread. */
  int sock_type = 0;
  socklen_t size = sizeof sock_type;
  if (getsockopt(sock, SOL_SOCKET, SO_TYPE, &sock_type, &size) != 0) return throw_errno(env, "start: socket", errno);
  int flags = fcntl(sock, F_GETFL);
  if (sock_type != SOCK_STREAM || flags < 0 || !(flags & O_NONBLOCK)) return throw_errno(env, "start: socket", EINVAL);
  int error = ensure_started(env);
  if (error) return throw_errno(env, "start: engine", error);
  job *j = calloc(1, sizeof *j);
  if (!j) return throw_errno(env, "start", ENOMEM);
  j->sock = fcntl(sock, F_DUPFD_CLOEXEC, 0);
  if (j->sock < 0) {
    free(j);
    return throw_errno(env, "start: socket", errno);
  }
  j->file = fcntl(file, F_DUPFD_CLOEXEC, 0);
  if (j->file < 0) {
    error = errno;
    close(j->sock);
    free(j);
    return throw_errno(env, "start: file", error);
  }
  j->offset = (off_t)offset;
  j->remaining = length;
  napi_create_reference(env, argv[4], 1, &j->callback);
  if (running++ == 0) napi_ref_threadsafe_function(env, done_fn);
  pthread_mutex_lock(&lock);
  j->id = next_id++;
  if (next_id == 0) next_id = 1;
  j->next = incoming;
  incoming = j;
  pthread_mutex_unlock(&lock);
  wake();
  napi_value id;
  napi_create_uint32(env, j->id, &id);
  return id;
}

/* The job with `id` among the active and the incoming ones (under the lock), or NULL. */
static job *find(uint32_t id) {
  for (job *j = active; j; j = j->next) if (j->id == id) return j;
  for (job *j = incoming; j; j = j->next) if (j->id == id) return j;
  return NULL;
}

/* The one argument of cancel(id) and sent(id); false (a TypeError thrown) when it is not an id. */
static int id_argument(napi_env env, napi_callback_info info, const char *usage, uint32_t *id) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || napi_get_value_uint32(env, argv[0], id) != napi_ok) {
    napi_throw_type_error(env, NULL, usage);
    return 0;
  }
  return 1;
}

static napi_value cancel(napi_env env, napi_callback_info info) {
  uint32_t id;
  if (!id_argument(env, info, "cancel(id)", &id)) return NULL;
  pthread_mutex_lock(&lock);
  job *j = find(id);
  if (j) j->cancelled = 1;
  pthread_mutex_unlock(&lock);
  if (j) wake();
  return NULL;
}

static napi_value sent(napi_env env, napi_callback_info info) {
  uint32_t id;
  if (!id_argument(env, info, "sent(id)", &id)) return NULL;
  pthread_mutex_lock(&lock);
  job *j = find(id);
  double bytes = j ? (double)j->sent : 0;
  pthread_mutex_unlock(&lock);
  napi_value result;
  napi_create_double(env, bytes, &result);
  return result;
}

static napi_value trim_heap(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result;
#ifdef __GLIBC__
  napi_get_boolean(env, malloc_trim(0) != 0, &result);
#else
  napi_get_undefined(env, &result);
#endif
  return result;
}

static napi_value accept_pending(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd, max;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_value_int32(env, argv[1], &max) != napi_ok) {
    napi_throw_type_error(env, NULL, "acceptPending(listenFd, max)");
    return NULL;
  }
  napi_value result;
  napi_create_array(env, &result);
  uint32_t count = 0;
  while ((int64_t)count < max) {
    int client = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (client < 0) {
      /* A client that gave up while queued, or a signal: the next one. Anything else (EAGAIN: the
         queue is empty; EMFILE: out of descriptors, which libuv's own accept handles) ends it. */
      if (errno == EINTR || errno == ECONNABORTED) continue;
      break;
    }
    napi_value value;
    napi_create_int32(env, client, &value);
    napi_set_element(env, result, count++, value);
  }
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor properties[] = {
      {"start", NULL, start, NULL, NULL, NULL, napi_default, NULL},
      {"cancel", NULL, cancel, NULL, NULL, NULL, napi_default, NULL},
      {"sent", NULL, sent, NULL, NULL, NULL, napi_default, NULL},
      {"trimHeap", NULL, trim_heap, NULL, NULL, NULL, napi_default, NULL},
      {"acceptPending", NULL, accept_pending, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof properties / sizeof properties[0], properties);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
