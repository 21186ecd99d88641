package client

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/imbridge/imbridge/protocol"
)

// The commands of the typing indicator, sent as online-only data
// {"command": ...}.
const (
	CommandTyping     = "textInput"     // the sender is typing
	CommandTypingStop = "textInputStop" // the sender stopped without sending
)

type command struct {
	Command string `json:"command"`
}

// Typist sends the typing indicator to one peer: call Keystroke on every key
// press and Stop when the user clears the input without sending.
type Typist struct {
	c    *Client
	peer string

	mu      sync.Mutex // guards the fields below
	last    time.Time  // when the last indicator went out; zero after Stop or a send
	queue   []string   // commands to send, in order; at most maxTypingQueue
	sending bool       // a goroutine is sending the queue; it ends when the queue is empty
}

// maxTypingQueue bounds a Typist's queue; indicators beyond it are dropped.
const maxTypingQueue = 4

// Typist returns the typing indicator sender for peer (the same one for the
// same peer). It holds a goroutine only while indicators are being sent.
func (c *Client) Typist(peer string) *Typist {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.typists[peer]
	if t == nil {
		t = &Typist{c: c, peer: peer}
		c.typists[peer] = t
	}
	return t
}

// enqueue queues cmd, dropping it if the queue is full (indicators are
// best-effort), and starts the sending goroutine if none runs.
func (t *Typist) enqueue(cmd string) {
	t.mu.Lock()
	if len(t.queue) >= maxTypingQueue {
		t.mu.Unlock()
		return
	}
	t.queue = append(t.queue, cmd)
	start := !t.sending
	t.sending = true
	t.mu.Unlock()
	if start {
		go t.drain()
	}
}

// drain sends queued commands one at a time, so that a stop never
// overtakes the indicator before it, and ends when the queue is empty.
func (t *Typist) drain() {
	for {
		t.mu.Lock()
		if len(t.queue) == 0 {
			t.sending = false
			t.mu.Unlock()
			return
		}
		cmd := t.queue[0]
		t.queue = t.queue[1:]
		t.mu.Unlock()
		t.send(cmd)
	}
}

// Keystroke notes a key press. It sends {"command":"textInput"} online-only
// at most once per Config.TypingInterval, in the background, and never blocks.
func (t *Typist) Keystroke() {
	t.mu.Lock()
	due := time.Since(t.last) >= t.c.cfg.TypingInterval
	if due {
		t.last = time.Now()
	}
	t.mu.Unlock()
	if due {
		t.enqueue(CommandTyping)
	}
}

// Stop tells the peer that typing stopped, if it was told typing started.
func (t *Typist) Stop() {
	t.mu.Lock()
	was := !t.last.IsZero()
	t.last = time.Time{}
	t.mu.Unlock()
	if was {
		t.enqueue(CommandTypingStop)
	}
}

func (t *Typist) send(cmd string) {
	ctx, cancel := context.WithTimeout(context.Background(), t.c.cfg.TypingInterval)
	defer cancel()
	if _, err := t.c.SendMessage(ctx, t.peer, command{cmd}, SendOptions{OnlineUserOnly: true}); err != nil {
		t.c.log.Debug("typing indicator not sent", "peer", t.peer, "error", err)
	}
}

// sent resets the typist of peer after a stored message went to it: the
// receiver clears its indicator on the message, so the next key press must
// send a fresh one.
func (c *Client) sent(peer string) {
	c.mu.Lock()
	t := c.typists[peer]
	c.mu.Unlock()
	if t != nil {
		t.mu.Lock()
		t.last = time.Time{}
		t.mu.Unlock()
	}
}

// peerTyping is the receiving side's state for one peer.
type peerTyping struct {
	typing  bool
	since   int64 // server time (ms) of the peer's last stored message
	timer   *time.Timer
	version uint64 // bumped on each change; a timer of an older version does nothing
}

// acceptOnline handles an online-only message: a typing command goes to
// OnTyping (when set), anything else to OnMessage. Nothing is kept.
func (c *Client) acceptOnline(m protocol.Message) {
	if c.cfg.OnTyping != nil {
		var cmd command
		if json.Unmarshal(m.Data, &cmd) == nil && (cmd.Command == CommandTyping || cmd.Command == CommandTypingStop) {
			c.mu.Lock()
			if cmd.Command == CommandTyping {
				c.typingStarted(m.From, m.Time)
			} else {
				c.typingStopped(m.From)
			}
			c.mu.Unlock()
			return
		}
	}
	if c.cfg.OnMessage != nil {
		c.run.do(func() { c.cfg.OnMessage(m) })
	}
}

// typingStarted marks peer typing until TypingTimeout passes without another
// indicator. An indicator older than the peer's last message is stale.
// c.mu is held.
func (c *Client) typingStarted(peer string, at int64) {
	w := c.watch(peer)
	if at <= w.since || c.closed {
		return
	}
	w.version++
	v := w.version
	if w.timer != nil {
		w.timer.Stop()
	}
	w.timer = time.AfterFunc(c.cfg.TypingTimeout, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if w.version == v {
			c.setTyping(peer, w, false)
		}
	})
	c.setTyping(peer, w, true)
}

// typingCleared ends peer's typing state because a stored message from peer
// arrived, sent at server time at; indicators sent before it are stale from
// now on. c.mu is held.
func (c *Client) typingCleared(peer string, at int64) {
	w := c.watch(peer)
	w.since = max(w.since, at)
	c.typingStopped(peer)
}

// typingStopped ends peer's typing state. c.mu is held.
func (c *Client) typingStopped(peer string) {
	w := c.watch(peer)
	w.version++
	if w.timer != nil {
		w.timer.Stop()
	}
	c.setTyping(peer, w, false)
}

func (c *Client) watch(peer string) *peerTyping {
	w := c.watching[peer]
	if w == nil {
		w = &peerTyping{}
		c.watching[peer] = w
	}
	return w
}

// setTyping reports a change of peer's state to OnTyping. c.mu is held.
func (c *Client) setTyping(peer string, w *peerTyping, typing bool) {
	if w.typing == typing {
		return
	}
	w.typing = typing
	c.run.do(func() { c.cfg.OnTyping(peer, typing) })
}
