/* The loop: the epoll set's events in, records out to JavaScript (one call per turn). */
#include "relay.h"

/*
 * Hands the queued records to JavaScript: up to MAIL_RECS per call, copied into the shared
 * mailbox, with the addresses of ACCEPTED records as string arguments (record field 4 holds the
 * argument's index). Records queued while JavaScript reads (its calls into the relay can end
 * one) go in the next call of the same loop.
 */
static void hand_over(instance *in) {
  if (in->dispatching) return;
  napi_env env = in->env;
  while (in->qn > 0) {
    napi_handle_scope scope;
    if (napi_open_handle_scope(env, &scope) != napi_ok) break;
    napi_value fn, recv, argv[1 + MAIL_RECS];
    bool ok = napi_get_reference_value(env, in->on_batch, &fn) == napi_ok &&
              napi_get_global(env, &recv) == napi_ok;
    int n = in->qn < MAIL_RECS ? in->qn : MAIL_RECS;
    size_t argc = 1;
    for (int k = 0; ok && k < n; k++) {
      record *rec = &in->queue[k];
      if (rec->v[0] == REC_ACCEPTED && rec->v[2] >= 0) {
        ok = napi_create_string_latin1(env, rec->ip, NAPI_AUTO_LENGTH, &argv[argc]) == napi_ok;
        rec->v[4] = (double)argc++;
      }
      memcpy(in->mail + (size_t)k * REC_LEN, rec->v, sizeof rec->v);
    }
    ok = ok && napi_create_int32(env, n, &argv[0]) == napi_ok;
    if (!ok) {
      napi_close_handle_scope(env, scope);
      break; /* the records stay queued; the next turn tries again */
    }
    in->qn -= n;
    memmove(in->queue, in->queue + n, sizeof(record) * (size_t)in->qn);
    in->dispatching = 1;
    make_callback(in, recv, fn, argc, argv);
    in->dispatching = 0;
    napi_close_handle_scope(env, scope);
  }
  if (in->qn > 0) kick(in); /* a hand-over that could not finish: try again next turn */
  else release_retired(&in->relays);
}

/* The loop turn after records were queued or relays stopped with bytes waiting. */
void on_later(uv_idle_t *h) {
  instance *in = h->data;
  run_pending(in);
  hand_over(in);
  if (in->pending == NULL && in->qn == 0) {
    uv_idle_stop(&in->later);
    in->later_on = 0;
  }
}

/*
 * Takes every event the epoll set has, in batches, waiting up to `timeout` ms for the first;
 * returns how many were the relay's, or -1 when the loop's own descriptors are ready too (the
 * loop should poll them now).
 */
static int take_events(instance *in, int timeout) {
  struct epoll_event evs[BATCH];
  int total = 0, loop_ready = 0;
  for (;;) {
    int n = epoll_wait(in->epfd, evs, BATCH, timeout);
    if (n <= 0) break; /* 0, or EINTR: the loop runs its turn and comes back */
    timeout = 0;
    total += n;
    for (int k = 0; k < n; k++) {
      uint64_t key = evs[k].data.u64;
      if (key == LOOP_KEY) {
        loop_ready = 1;
        total--;
        continue;
      }
      uint32_t gen = (uint32_t)(key >> 32);
      int kind = (int)((key >> KIND_SHIFT) & 3);
      int index = (int)((key & ((1u << KIND_SHIFT) - 1)) >> 1);
      if (kind == KIND_ACCEPTOR) {
        if (index < in->acceptors.n && in->acceptors.e[index].fd >= 0 && in->acceptors.e[index].gen == gen)
          on_accept(in, index);
        continue;
      }
      if (kind == KIND_UDP_LISTENER) {
        if (index < in->ulisteners.n && in->ulisteners.e[index].fd >= 0 && in->ulisteners.e[index].gen == gen)
          on_udp_listener(in, index);
        continue;
      }
      if (kind == KIND_UDP_FLOW) {
        if (index < in->flows.n && in->flows.items[index] != NULL && in->flows.gens[index] == gen)
          on_udp_flow(in, in->flows.items[index]);
        continue;
      }
      int slot = index, s = (int)(key & 1);
      if (slot >= in->relays.n || in->relays.gens[slot] != gen) continue; /* ended earlier in this batch */
      relay *r = in->relays.items[slot];
      if (r == NULL) continue;
      uint32_t ev = evs[k].events;
      if (r->state == ST_CONNECTING) {
        if (s == UP) on_connecting(r, ev);
      } else if (r->state == ST_RELAYING) {
        on_relay_event(r, s, ev);
      } else if (ev & EPOLLRDHUP) {
        r->d[s].rdhup = 1; /* connected, waiting for attach(): it reads what came meanwhile */
      }
    }
    if (n < BATCH) break;
  }
  return loop_ready ? -1 : total;
}

/*
 * The loop's wait, in its prepare phase: while the relay has sockets open, the loop's own epoll
 * descriptor is in the relay's set and the loop sleeps here, on the relay's set, for as long as
 * it would have slept in its own poll (uv_backend_timeout without the `spin` handle); `spin`
 * keeps the loop's own poll, which follows, from sleeping again. The relay's sockets are so in an
 * epoll set that nothing else watches: adding one takes the plain path (no check for loops of
 * nested sets), and their events wake this thread directly. After the records are handed over it
 * looks again, up to WAKE_ROUNDS times while each look finds events: under load they arrive while
 * JavaScript reads the records, and taking them here saves a turn of the loop.
 */
void on_wait(uv_prepare_t *h) {
  instance *in = h->data;
  uv_loop_t *loop = in->loop;
  int timeout = 0;
  /* Sleep only if the loop would: nothing queued for the relay's next turn, and what libuv says.
   * uv_backend_timeout is 0 also while the loop has changes to its own descriptors to apply (a
   * socket JavaScript opened or asked to write since its last poll), whose events could not
   * wake this wait until its poll has registered them. */
  if (!in->later_on) {
    uv_idle_stop(&in->spin);
    timeout = uv_backend_timeout(loop);
    uv_idle_start(&in->spin, on_spin);
  }
  for (int round = 0; round < WAKE_ROUNDS; round++) {
    in->polling = 1;
    int n = take_events(in, round == 0 ? timeout : 0);
    in->polling = 0;
    /* After a sleep, the loop's clock moves on before the records are handed over: timers
     * started for them from native code (libuv's uv_now, not Node's clock, which reads the time
     * itself) count from now, not from before the sleep. */
    if (round == 0 && timeout != 0) uv_update_time(loop);
    hand_over(in);
    if (n <= 0) break;
  }
}

/* Active while the loop waits in on_wait: its presence keeps the loop's own poll from sleeping. */
void on_spin(uv_idle_t *h) {
  (void)h;
}
