/*
 * sluice splice relay: moves the bytes of an established TCP session between its two sockets
 * inside the kernel (splice(2) through a pipe), driven by the Node.js event loop (uv_poll), so
 * no byte crosses into JavaScript and no Buffer is allocated per read.
 *
 * JavaScript hands over the two connected sockets' descriptors (the relay dup()s them; the
 * net.Socket objects are then destroyed), optionally with bytes to send upstream first (a PROXY
 * header, client bytes read during the preface). The relay:
 *   - reads a direction only while its pipe is empty and its destination is not blocked, so at
 *     most one pipe (64 KiB) is buffered per direction, and the sender is held back by TCP;
 *   - forwards FIN with shutdown(SHUT_WR) once the pipe has drained (half-close each way);
 *   - ends when both directions have finished, or at the first error on either socket;
 *   - takes a pipe from a per-process pool only while bytes are in flight, so an idle session
 *     holds no pipe.
 * JavaScript reads the counters (bytes each way, who sent FIN first) for idle and half-closed
 * timeouts and metrics, may abort a relay at any time (timeouts, drains, shutdown), and is called
 * back once when a relay ends on its own.
 *
 * Only this one thread touches the state: every entry point runs on the event loop's thread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

/* Pipe size (F_SETPIPE_SZ) and bytes asked of the source per splice. */
#define PIPE_SIZE (256 * 1024)
static size_t chunk = 64 * 1024; /* raised to PIPE_SIZE when the kernel allows it */
#define CHUNK chunk
/* Splices per direction per wake-up before yielding to the rest of the loop. */
#define ROUNDS 16
/* Empty pipes kept for reuse; more are closed when released. */
#define POOL_MAX 256

#define DOWN 0 /* the client's socket */
#define UP 1   /* the backend's socket */

typedef struct instance instance;

typedef struct {
  int r, w; /* -1 when no pipe is held */
  size_t fill;
  uint64_t bytes;   /* delivered to the destination */
  char *prefix;     /* sent to the destination before any spliced byte */
  size_t prefix_len, prefix_off;
  int eof;          /* the source sent FIN */
  int shut;         /* FIN forwarded (shutdown(SHUT_WR) on the destination) */
  int blocked;      /* waiting for the destination to become writable */
} direction;

typedef struct {
  instance *inst;
  int slot;
  int fd[2];
  uv_poll_t poll[2];
  int events[2];
  int polling[2];
  int closes_pending;
  int ended;
  direction d[2]; /* d[DOWN]: client -> backend; d[UP]: backend -> client */
  int first_fin;  /* -1, DOWN or UP */
  int err_side;   /* -1, DOWN or UP */
  int err_no;
} relay;

struct instance {
  napi_env env;
  uv_loop_t *loop;
  napi_ref on_end;
  napi_ref stats_ref;
  double *stats;
  napi_async_context async;
  relay **slots;
  int nslots;
  int *free_slots;
  int nfree;
  int pool[POOL_MAX][2];
  int pool_n;
  int64_t pipes_open;
  int64_t relays_open;
};

/* stats layout shared with JavaScript (a Float64Array given to init). */
enum { S_BYTES_UP, S_BYTES_DOWN, S_FIRST_FIN, S_ERR_SIDE, S_ERR_NO, S_LEN };

static int pipe_take(instance *in, direction *d) {
  if (in->pool_n > 0) {
    in->pool_n--;
    d->r = in->pool[in->pool_n][0];
    d->w = in->pool[in->pool_n][1];
    return 0;
  }
  int fds[2];
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) return errno;
  d->r = fds[0];
  d->w = fds[1];
  in->pipes_open++;
  if (fcntl(fds[1], F_SETPIPE_SZ, PIPE_SIZE) >= PIPE_SIZE) chunk = PIPE_SIZE;
  return 0;
}

/* Gives the direction's pipe back: to the pool when empty, closed when it still holds bytes. */
static void pipe_release(instance *in, direction *d) {
  if (d->r < 0) return;
  if (d->fill == 0 && in->pool_n < POOL_MAX) {
    in->pool[in->pool_n][0] = d->r;
    in->pool[in->pool_n][1] = d->w;
    in->pool_n++;
  } else {
    close(d->r);
    close(d->w);
    in->pipes_open--;
  }
  d->r = d->w = -1;
  d->fill = 0;
}

static void write_stats(relay *r) {
  double *s = r->inst->stats;
  s[S_BYTES_UP] = (double)r->d[DOWN].bytes;
  s[S_BYTES_DOWN] = (double)r->d[UP].bytes;
  s[S_FIRST_FIN] = r->first_fin;
  s[S_ERR_SIDE] = r->err_side;
  s[S_ERR_NO] = r->err_no;
}

static void on_handle_closed(uv_handle_t *h) {
  relay *r = h->data;
  if (--r->closes_pending == 0) {
    free(r->d[DOWN].prefix);
    free(r);
  }
}

/* Stops polling, closes both descriptors and frees the slot. Safe to call once. */
static void teardown(relay *r) {
  instance *in = r->inst;
  r->ended = 1;
  for (int s = 0; s < 2; s++) {
    if (r->polling[s]) uv_poll_stop(&r->poll[s]);
    uv_close((uv_handle_t *)&r->poll[s], on_handle_closed);
    close(r->fd[s]);
    pipe_release(in, &r->d[s]);
  }
  in->slots[r->slot] = NULL;
  in->free_slots[in->nfree++] = r->slot;
  in->relays_open--;
}

/* The relay ended on its own: tear it down and tell JavaScript. */
static void finish(relay *r) {
  instance *in = r->inst;
  napi_env env = in->env;
  int slot = r->slot;
  write_stats(r);
  teardown(r);

  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value fn, recv, arg, result;
  /* napi_make_callback wants an object as `this`, and drains the microtask and tick queues. */
  if (napi_get_reference_value(env, in->on_end, &fn) == napi_ok && napi_get_global(env, &recv) == napi_ok &&
      napi_create_int32(env, slot, &arg) == napi_ok) {
    napi_make_callback(env, in->async, recv, fn, 1, &arg, &result);
    bool pending = false;
    if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
      napi_value err;
      napi_get_and_clear_last_exception(env, &err);
      napi_fatal_exception(env, err);
    }
  }
  napi_close_handle_scope(env, scope);
}

static void fail(relay *r, int side, int err) {
  if (r->err_side < 0) {
    r->err_side = side;
    r->err_no = err;
  }
}

/*
 * Moves what it can of direction i (source fd[i], destination fd[1-i]). Returns 0, or -1 after
 * recording an error (the caller then ends the relay).
 */
static int pump(relay *r, int i) {
  direction *d = &r->d[i];
  int src = r->fd[i], dst = r->fd[1 - i];
  if (d->shut || d->blocked) return 0;
  for (int round = 0; round < ROUNDS; round++) {
    while (d->prefix_off < d->prefix_len) {
      ssize_t n = send(dst, d->prefix + d->prefix_off, d->prefix_len - d->prefix_off, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        d->prefix_off += (size_t)n;
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        d->blocked = 1;
        return 0;
      } else {
        fail(r, 1 - i, n < 0 ? errno : EPIPE);
        return -1;
      }
    }
    if (d->fill > 0) {
      ssize_t n = splice(d->r, NULL, dst, NULL, d->fill, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        d->fill -= (size_t)n;
        d->bytes += (uint64_t)n;
        if (d->fill > 0) continue;
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        d->blocked = 1;
        return 0;
      } else {
        fail(r, 1 - i, n < 0 ? errno : EPIPE);
        return -1;
      }
    }
    if (d->eof) {
      pipe_release(r->inst, d);
      /* ENOTCONN: the destination already closed for good; its error shows on the next read. */
      shutdown(dst, SHUT_WR);
      d->shut = 1;
      if (r->first_fin < 0) r->first_fin = i;
      return 0;
    }
    if (d->r < 0) {
      int err = pipe_take(r->inst, d);
      if (err != 0) {
        fail(r, i, err);
        return -1;
      }
    }
    ssize_t n = splice(src, NULL, d->w, NULL, CHUNK, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      d->fill = (size_t)n;
      if ((size_t)n < CHUNK) {
        /* A short read drained the socket: deliver, then wait for the next wake-up. */
        ssize_t m = splice(d->r, NULL, dst, NULL, d->fill, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (m > 0) {
          d->fill -= (size_t)m;
          d->bytes += (uint64_t)m;
        } else if (m < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          fail(r, 1 - i, errno);
          return -1;
        }
        if (d->fill > 0) {
          d->blocked = 1;
        } else {
          pipe_release(r->inst, d);
        }
        return 0;
      }
    } else if (n == 0) {
      d->eof = 1;
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      pipe_release(r->inst, d);
      return 0;
    } else {
      fail(r, i, errno);
      return -1;
    }
  }
  return 0;
}

static void on_poll(uv_poll_t *h, int status, int events);

/* Polls each socket for what its two directions wait on. */
static void update_interest(relay *r) {
  for (int s = 0; s < 2; s++) {
    int ev = 0;
    if (!r->d[s].eof && !r->d[s].blocked) ev |= UV_READABLE;
    if (r->d[1 - s].blocked) ev |= UV_WRITABLE;
    if (ev == 0) {
      if (r->polling[s]) {
        uv_poll_stop(&r->poll[s]);
        r->polling[s] = 0;
      }
    } else if (!r->polling[s] || ev != r->events[s]) {
      uv_poll_start(&r->poll[s], ev, on_poll);
      r->polling[s] = 1;
    }
    r->events[s] = ev;
  }
}

static void on_poll(uv_poll_t *h, int status, int events) {
  relay *r = h->data;
  if (r->ended) return;
  int s = h == &r->poll[DOWN] ? DOWN : UP;
  if (status < 0) {
    fail(r, s, -status);
    finish(r);
    return;
  }
  if (events & UV_WRITABLE) {
    /* The direction writing to this socket may go on. */
    r->d[1 - s].blocked = 0;
    if (pump(r, 1 - s) < 0) {
      finish(r);
      return;
    }
  }
  if (events & UV_READABLE) {
    if (pump(r, s) < 0) {
      finish(r);
      return;
    }
  }
  if (r->d[DOWN].shut && r->d[UP].shut) {
    finish(r);
    return;
  }
  update_interest(r);
}

/* ---- JavaScript bindings ---- */

#define CHECK(call)                                                                                   \
  do {                                                                                                \
    if ((call) != napi_ok) {                                                                          \
      napi_throw_error(env, NULL, "sluice relay: " #call " failed");                                  \
      return NULL;                                                                                    \
    }                                                                                                 \
  } while (0)

static instance *get_instance(napi_env env) {
  void *data = NULL;
  napi_get_instance_data(env, &data);
  return data;
}

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char msg[128];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  napi_value code, text, error;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text);
  napi_create_int32(env, err, &code);
  napi_create_error(env, NULL, text, &error);
  napi_set_named_property(env, error, "errno", code);
  napi_throw(env, error);
  return NULL;
}

/* init(onEnd: (slot) => void, stats: Float64Array(5)) */
static napi_value js_init(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  instance *in = get_instance(env);
  if (in->on_end != NULL) {
    napi_delete_reference(env, in->on_end);
    napi_delete_reference(env, in->stats_ref);
  }
  napi_typedarray_type type;
  size_t length;
  void *data;
  CHECK(napi_get_typedarray_info(env, argv[1], &type, &length, &data, NULL, NULL));
  if (type != napi_float64_array || length < S_LEN) {
    napi_throw_type_error(env, NULL, "stats must be a Float64Array of 5");
    return NULL;
  }
  CHECK(napi_create_reference(env, argv[0], 1, &in->on_end));
  CHECK(napi_create_reference(env, argv[1], 1, &in->stats_ref));
  in->stats = data;
  return NULL;
}

static int grow_slots(instance *in) {
  int n = in->nslots == 0 ? 1024 : in->nslots * 2;
  relay **slots = realloc(in->slots, sizeof(relay *) * (size_t)n);
  if (slots == NULL) return -1;
  int *free_slots = realloc(in->free_slots, sizeof(int) * (size_t)n);
  if (free_slots == NULL) {
    in->slots = slots;
    return -1;
  }
  for (int i = in->nslots; i < n; i++) slots[i] = NULL;
  /* Lowest slots first, so slot numbers stay small. */
  for (int i = n - 1; i >= in->nslots; i--) free_slots[in->nfree++] = i;
  in->slots = slots;
  in->free_slots = free_slots;
  in->nslots = n;
  return 0;
}

/* start(downFd, upFd, prefix?: Buffer) => slot */
static napi_value js_start(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  instance *in = get_instance(env);
  if (in->on_end == NULL) {
    napi_throw_error(env, NULL, "sluice relay: init() first");
    return NULL;
  }
  int32_t fds[2];
  CHECK(napi_get_value_int32(env, argv[0], &fds[0]));
  CHECK(napi_get_value_int32(env, argv[1], &fds[1]));
  char *prefix = NULL;
  size_t prefix_len = 0;
  if (argc > 2) {
    bool is_buffer = false;
    napi_is_buffer(env, argv[2], &is_buffer);
    if (is_buffer) {
      void *bytes;
      CHECK(napi_get_buffer_info(env, argv[2], &bytes, &prefix_len));
      if (prefix_len > 0) {
        prefix = malloc(prefix_len);
        if (prefix == NULL) return throw_errno(env, "malloc", ENOMEM);
        memcpy(prefix, bytes, prefix_len);
      }
    }
  }
  if (in->nfree == 0 && grow_slots(in) < 0) {
    free(prefix);
    return throw_errno(env, "slots", ENOMEM);
  }
  relay *r = calloc(1, sizeof *r);
  if (r == NULL) {
    free(prefix);
    return throw_errno(env, "calloc", ENOMEM);
  }
  for (int s = 0; s < 2; s++) {
    r->fd[s] = fcntl(fds[s], F_DUPFD_CLOEXEC, 0);
    if (r->fd[s] < 0) {
      int err = errno;
      if (s == 1) close(r->fd[0]);
      free(r);
      free(prefix);
      return throw_errno(env, "dup", err);
    }
  }
  r->inst = in;
  r->first_fin = -1;
  r->err_side = -1;
  for (int s = 0; s < 2; s++) {
    r->d[s].r = r->d[s].w = -1;
    uv_poll_init(in->loop, &r->poll[s], r->fd[s]);
    r->poll[s].data = r;
  }
  r->closes_pending = 2;
  r->d[DOWN].prefix = prefix;
  r->d[DOWN].prefix_len = prefix_len;
  r->slot = in->free_slots[--in->nfree];
  in->slots[r->slot] = r;
  in->relays_open++;
  /* Send the prefix now: a fresh connection's send buffer nearly always takes it whole. */
  if (pump(r, DOWN) < 0) {
    int side = r->err_side, err = r->err_no;
    teardown(r);
    throw_errno(env, "relay", err);
    napi_value error, v;
    if (napi_get_and_clear_last_exception(env, &error) == napi_ok) {
      napi_create_int32(env, side, &v);
      napi_set_named_property(env, error, "side", v);
      napi_throw(env, error);
    }
    return NULL;
  }
  update_interest(r);
  napi_value result;
  CHECK(napi_create_int32(env, r->slot, &result));
  return result;
}

static relay *slot_arg(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t slot;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_int32(env, argv[0], &slot) != napi_ok)
    return NULL;
  instance *in = get_instance(env);
  if (slot < 0 || slot >= in->nslots) return NULL;
  return in->slots[slot];
}

/* info(slot) => true while the relay runs; fills stats */
static napi_value js_info(napi_env env, napi_callback_info info) {
  relay *r = slot_arg(env, info);
  napi_value result;
  if (r != NULL) write_stats(r);
  CHECK(napi_get_boolean(env, r != NULL, &result));
  return result;
}

/* abort(slot) => true if it was running; fills stats, closes both sockets, no callback */
static napi_value js_abort(napi_env env, napi_callback_info info) {
  relay *r = slot_arg(env, info);
  napi_value result;
  if (r != NULL) {
    write_stats(r);
    teardown(r);
  }
  CHECK(napi_get_boolean(env, r != NULL, &result));
  return result;
}

/* counts() => [relays open, pipes open, pipes pooled] */
static napi_value js_counts(napi_env env, napi_callback_info info) {
  (void)info;
  instance *in = get_instance(env);
  napi_value arr, v;
  CHECK(napi_create_array_with_length(env, 3, &arr));
  CHECK(napi_create_int64(env, in->relays_open, &v));
  CHECK(napi_set_element(env, arr, 0, v));
  CHECK(napi_create_int64(env, in->pipes_open, &v));
  CHECK(napi_set_element(env, arr, 1, v));
  CHECK(napi_create_int64(env, in->pool_n, &v));
  CHECK(napi_set_element(env, arr, 2, v));
  return arr;
}

static void instance_free(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  instance *in = data;
  for (int i = 0; i < in->pool_n; i++) {
    close(in->pool[i][0]);
    close(in->pool[i][1]);
  }
  free(in->slots);
  free(in->free_slots);
  free(in);
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  instance *in = calloc(1, sizeof *in);
  if (in == NULL) {
    napi_throw_error(env, NULL, "sluice relay: out of memory");
    return NULL;
  }
  in->env = env;
  CHECK(napi_get_uv_event_loop(env, &in->loop));
  napi_value name;
  CHECK(napi_create_string_utf8(env, "sluice.relay", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_async_init(env, NULL, name, &in->async));
  CHECK(napi_set_instance_data(env, in, instance_free, NULL));
  napi_property_descriptor props[] = {
      {"init", NULL, js_init, NULL, NULL, NULL, napi_default, NULL},
      {"start", NULL, js_start, NULL, NULL, NULL, napi_default, NULL},
      {"info", NULL, js_info, NULL, NULL, NULL, napi_default, NULL},
      {"abort", NULL, js_abort, NULL, NULL, NULL, napi_default, NULL},
      {"counts", NULL, js_counts, NULL, NULL, NULL, napi_default, NULL},
  };
  CHECK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  return exports;
}
