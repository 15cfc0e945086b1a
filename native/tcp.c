/* The TCP relay of one session: connect, attach, copy/splice both ways, half-close, end. */
#include "relay.h"

/* Pipe size (F_SETPIPE_SZ) and bytes asked of the source per splice. */
#define PIPE_SIZE (256 * 1024)
static size_t chunk = 64 * 1024; /* raised to PIPE_SIZE when the kernel allows it */
#define CHUNK chunk
/* Reads below this size are copied (recv/send through one shared buffer); a direction whose read
 * fills it switches to splice for the rest of the session. */
#define COPY_SIZE (16 * 1024)
static char copy_buf[COPY_SIZE];

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
  /* A smaller pipe still works (splices take what fits): only the chunk size depends on it. */
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

void write_stats(relay *r) {
  double *s = r->inst->stats;
  s[S_BYTES_UP] = (double)r->d[DOWN].bytes;
  s[S_BYTES_DOWN] = (double)r->d[UP].bytes;
  s[S_FIRST_FIN] = r->first_fin;
  s[S_ERR_SIDE] = r->err_side;
  s[S_ERR_NO] = r->err_no;
  s[S_STATE] = r->state;
}

/* Watches one side for input, output and the peer's FIN, edge-triggered, until it is closed. */
int watch_side(relay *r, int s) {
  struct epoll_event ev = {
      .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
      .data.u64 = KEY(r->inst->relays.gens[r->slot], KIND_RELAY, r->slot, s),
  };
  if (epoll_ctl(r->inst->epfd, EPOLL_CTL_ADD, r->fd[s], &ev) < 0) return errno;
  r->registered[s] = 1;
  return 0;
}

/* Takes one side out of the set while its descriptor stays open (given back, or still shared). */
int unwatch_side(relay *r, int s) {
  if (!r->registered[s]) return 0;
  r->registered[s] = 0;
  if (epoll_ctl(r->inst->epfd, EPOLL_CTL_DEL, r->fd[s], NULL) < 0) return errno;
  return 0;
}

static void unpend(relay *r) {
  if (!r->pending) return;
  for (relay **p = &r->inst->pending; *p != NULL; p = &(*p)->next_pending) {
    if (*p == r) {
      *p = r->next_pending;
      break;
    }
  }
  r->pending = 0;
  r->next_pending = NULL;
}

/*
 * Frees the relay; closes its descriptors (which takes them out of the epoll set). With an
 * outcome (OUTCOME_*), its final record is queued: the slot is retired until it is handed over.
 */
void teardown(relay *r, int outcome) {
  instance *in = r->inst;
  unpend(r);
  for (int s = 0; s < 2; s++) {
    if (r->fd[s] >= 0) close(r->fd[s]);
    pipe_release(in, &r->d[s]);
  }
  free(r->d[DOWN].prefix);
  free(r->d[UP].prefix);
  if (outcome == OUTCOME_NONE) id_release(&in->relays, r->slot);
  else id_retire(&in->relays, r->slot, outcome);
  if (--in->relays_open == 0) update_ref(in);
  free(r);
}

static void fail(relay *r, int side, int err) {
  if (r->err_side < 0) {
    r->err_side = side;
    r->err_no = err;
  }
}

/* The relay ended on its own: queue its final counters for JavaScript and tear it down. */
void finish(relay *r) {
  record *rec = push_record(r->inst, REC_ENDED);
  if (rec != NULL) {
    rec->v[1] = handle_of(r);
    rec->v[2] = (double)r->d[DOWN].bytes;
    rec->v[3] = (double)r->d[UP].bytes;
    rec->v[4] = r->first_fin;
    rec->v[5] = r->err_side;
    rec->v[6] = r->err_no;
    rec->v[7] = r->fd[DOWN] >= 0; /* the client was attached: the relay closes it */
  }
  teardown(r, r->fd[DOWN] >= 0 ? OUTCOME_CLIENT_CLOSED : OUTCOME_CLIENT_KEPT);
}

/*
 * Direction i read its source's FIN and delivered everything before it: forward the FIN. When
 * the other direction has finished already, close() (the relay ends now) sends it: one system
 * call less, and no unread byte is left on either socket, so the close is a FIN, not a reset.
 */
static int end_direction(relay *r, int i) {
  direction *d = &r->d[i];
  pipe_release(r->inst, d);
  if (!r->d[1 - i].shut && shutdown(r->fd[1 - i], SHUT_WR) < 0 && errno != ENOTCONN) {
    /* ENOTCONN: the destination is already closed for good; its error shows on its next read. */
    fail(r, 1 - i, errno);
    return -1;
  }
  d->shut = 1;
  if (r->first_fin < 0) r->first_fin = i;
  return 0;
}

/*
 * What a write to direction i's destination that moved nothing means: 1 try again (EINTR), 0 the
 * destination is full (the direction waits for its output edge), -1 an error, recorded.
 */
static int write_failed(relay *r, int i, ssize_t n) {
  if (n < 0 && errno == EINTR) return 1;
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
    r->d[i].blocked = 1;
    return 0;
  }
  fail(r, 1 - i, n < 0 ? errno : EPIPE);
  return -1;
}

/* Sends owed bytes (prefix, or what the destination could not take). 1 when all went, 0 when the
 * destination is full, -1 on an error. */
static int send_owed(relay *r, int i) {
  direction *d = &r->d[i];
  int dst = r->fd[1 - i];
  while (d->prefix_off < d->prefix_len) {
    ssize_t n = send(dst, d->prefix + d->prefix_off, d->prefix_len - d->prefix_off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      d->prefix_off += (size_t)n;
    } else {
      int again = write_failed(r, i, n);
      if (again <= 0) return again;
    }
  }
  free(d->prefix);
  d->prefix = NULL;
  d->prefix_len = d->prefix_off = 0;
  return 1;
}

/* Delivers what the pipe holds. 1 when it is empty, 0 when the destination is full, -1 on error. */
static int drain_pipe(relay *r, int i, int last) {
  direction *d = &r->d[i];
  while (d->fill > 0) {
    unsigned flags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK | (last ? SPLICE_F_MORE : 0);
    ssize_t n = splice(d->r, NULL, r->fd[1 - i], NULL, d->fill, flags);
    if (n > 0) {
      d->fill -= (size_t)n;
    } else {
      int again = write_failed(r, i, n);
      if (again <= 0) return again;
    }
  }
  return 1;
}

/* Copy mode: one recv and one send. 1 to go on reading, 0 to stop (drained or blocked), -1 error. */
static int copy_once(relay *r, int i) {
  direction *d = &r->d[i];
  ssize_t n = recv(r->fd[i], copy_buf, COPY_SIZE, 0);
  if (n == 0) {
    d->eof = 1;
    return 1;
  }
  if (n < 0) {
    if (errno == EINTR) return 1;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    fail(r, i, errno);
    return -1;
  }
  d->bytes += (uint64_t)n;
  /* A short read after the peer's FIN was reported: the FIN is next, so send the bytes corked
   * and let the FIN go out in the same segment (one wake-up for the receiver, not two). */
  int drained = n < COPY_SIZE;
  if (drained && d->rdhup) d->eof = 1;
  ssize_t m = send(r->fd[1 - i], copy_buf, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT | (d->eof ? MSG_MORE : 0));
  if (m < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
    fail(r, 1 - i, errno);
    return -1;
  }
  if (m < 0) m = 0;
  if (m < n) {
    /* The destination is full: keep the rest (at most COPY_SIZE) until its next output edge. */
    d->prefix = malloc((size_t)(n - m));
    if (d->prefix == NULL) {
      fail(r, i, ENOMEM);
      return -1;
    }
    memcpy(d->prefix, copy_buf + m, (size_t)(n - m));
    d->prefix_len = (size_t)(n - m);
    d->prefix_off = 0;
    d->blocked = 1;
    return 0;
  }
  if (drained) return d->eof; /* drained: the next input edge says when there is more */
  d->spliced = 1;             /* a full buffer: bulk transfer, splice from here on */
  return 1;
}

/* Splice mode: source to pipe, pipe to destination. Same results as copy_once. */
static int splice_once(relay *r, int i) {
  direction *d = &r->d[i];
  if (d->r < 0) {
    int err = pipe_take(r->inst, d);
    if (err != 0) {
      fail(r, i, err);
      return -1;
    }
  }
  ssize_t n = splice(r->fd[i], NULL, d->w, NULL, CHUNK, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
  if (n == 0) {
    d->eof = 1;
    return 1;
  }
  if (n < 0) {
    if (errno == EINTR) return 1;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      pipe_release(r->inst, d);
      return 0;
    }
    fail(r, i, errno);
    return -1;
  }
  d->fill = (size_t)n;
  d->bytes += (uint64_t)n;
  int drained = (size_t)n < CHUNK;
  if (drained && d->rdhup) d->eof = 1;
  int done = drain_pipe(r, i, d->eof);
  if (done <= 0) return done;
  if (!drained) return 1;
  if (!d->eof) pipe_release(r->inst, d);
  return d->eof;
}

/*
 * Moves what it can of direction i (source fd[i], destination fd[1-i]) and forwards its FIN.
 * Edge-triggered: it stops only when the source is drained, the destination is full (`blocked`
 * until its output edge) or the turn's budget is spent (`more`: the pending list continues it).
 * Returns 0, or -1 after recording an error (the caller then ends the relay).
 */
static int pump(relay *r, int i) {
  direction *d = &r->d[i];
  d->more = 0;
  if (d->shut || d->blocked) return 0;
  for (int round = 0; round < ROUNDS; round++) {
    int go = d->prefix != NULL ? send_owed(r, i) : 1;
    if (go > 0 && d->fill > 0) go = drain_pipe(r, i, d->eof);
    if (go <= 0) return go;
    if (d->eof) return end_direction(r, i);
    go = d->spliced ? splice_once(r, i) : copy_once(r, i);
    if (go < 0) return -1;
    if (go == 0 && (d->blocked || !d->eof)) return 0;
  }
  d->more = 1;
  return 0;
}

void pend(relay *r) {
  if (r->pending || !(r->d[DOWN].more || r->d[UP].more)) return;
  r->pending = 1;
  r->next_pending = r->inst->pending;
  r->inst->pending = r;
  kick(r->inst);
}

/* Takes the client's descriptor and starts relaying: prefix and early client bytes first, then
 * the client side joins the epoll set (after the first read, so its data is not reported twice). */
int start_relaying(relay *r, int client) {
  r->fd[DOWN] = client;
  r->state = ST_RELAYING;
  if (pump(r, DOWN) < 0) return -1;
  int err = watch_side(r, DOWN);
  if (err != 0) {
    fail(r, DOWN, err);
    return -1;
  }
  return pump(r, UP);
}

void on_connecting(relay *r, uint32_t events) {
  if (events & EPOLLRDHUP) r->d[UP].rdhup = 1;
  if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
  /* EPOLLOUT alone is a completed connect; only an error needs SO_ERROR. */
  int err = events & (EPOLLERR | EPOLLHUP) ? socket_error(r->fd[UP]) : 0;
  if (err == 0 && (events & (EPOLLERR | EPOLLHUP))) err = ECONNRESET; /* closed with no error left */
  if (err != 0) {
    record *rec = push_record(r->inst, REC_CONNECT_FAILED);
    if (rec != NULL) {
      rec->v[1] = handle_of(r);
      rec->v[2] = err;
    }
    teardown(r, OUTCOME_CLIENT_KEPT); /* the client descriptor, if any, is still JavaScript's */
    return;
  }
  if (r->client_fd < 0) {
    r->state = ST_CONNECTED;
    record *rec = push_record(r->inst, REC_CONNECTED);
    if (rec != NULL) rec->v[1] = handle_of(r);
    return;
  }
  int client = r->client_fd;
  r->client_fd = -1;
  if (start_relaying(r, client) < 0 || (r->d[DOWN].shut && r->d[UP].shut)) {
    finish(r);
    return;
  }
  pend(r);
}

void on_relay_event(relay *r, int s, uint32_t events) {
  if (events & EPOLLRDHUP) r->d[s].rdhup = 1;
  if (events & EPOLLERR) {
    /* A reset shows here even when neither direction would touch the socket again soon (its
     * input finished, nothing to write to it): end now rather than at the idle timeout. */
    int err = socket_error(r->fd[s]);
    if (err != 0) {
      fail(r, s, err);
      finish(r);
      return;
    }
  }
  if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && r->d[1 - s].blocked) {
    /* The direction writing to this socket may go on. */
    r->d[1 - s].blocked = 0;
    if (pump(r, 1 - s) < 0) {
      finish(r);
      return;
    }
  }
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) {
    if (pump(r, s) < 0) {
      finish(r);
      return;
    }
  }
  if (r->d[DOWN].shut && r->d[UP].shut) {
    finish(r);
    return;
  }
  pend(r);
}

/* Continues relays that stopped with bytes waiting; those still not done stay for the next turn. */
void run_pending(instance *in) {
  relay *list = in->pending;
  in->pending = NULL;
  while (list != NULL) {
    relay *r = list;
    list = r->next_pending;
    r->pending = 0;
    r->next_pending = NULL;
    int slot = r->slot;
    uint32_t gen = in->relays.gens[slot];
    for (int i = 0; i < 2; i++) {
      if (!r->d[i].more) continue;
      if (pump(r, i) < 0) {
        finish(r);
        break;
      }
    }
    if (in->relays.items[slot] != r || in->relays.gens[slot] != gen) continue; /* finished */
    if (r->d[DOWN].shut && r->d[UP].shut) finish(r);
    else pend(r);
  }
}
