package bridge

import (
	"errors"
	"time"

	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/storage"
)

// errQueryRate answers a history or sync request over the user's rate.
var errQueryRate = &protocol.Error{Code: protocol.CodeRateLimited, Message: "over the history and sync request rate; retry later"}

// allowQuery takes a token of user's history and sync rate, counting a
// refusal.
func (b *Bridge) allowQuery(user string) bool {
	if b.queries.allow(user) {
		return true
	}
	b.stats.queriesLimited.Add(1)
	return false
}

// History returns a page of user's conversation with req.With. req must have
// passed its Check. A user can only ever read conversations they are in: the
// conversation is always (user, req.With).
func (b *Bridge) History(user string, req protocol.HistoryRequest) protocol.Page {
	if b.cfg.Observer.Query != nil {
		defer observe(b.cfg.Observer.Query, "history", time.Now())
	}
	p, err := b.store.History(user, req.With, storage.HistoryFilter{After: req.After, Before: req.Before, Limit: req.Limit})
	page := protocol.Page{Type: "history", ID: req.ID}
	if err != nil {
		return b.queryFailed(page, err)
	}
	page.Messages, page.More = p.Messages, p.More
	if req.After > 0 {
		b.trimTail(&page)
		if page.More {
			page.NextAfter = page.Messages[len(page.Messages)-1].Seq
		}
	} else {
		b.trimHead(&page)
		if page.More {
			page.NextBefore = page.Messages[0].Seq
		}
	}
	page.Epoch = b.store.Epoch()
	if page.Messages == nil {
		page.Messages = []protocol.Message{}
	}
	return page
}

// Sync returns a page of everything stored for user with InboxSeq above
// req.After, oldest first.
func (b *Bridge) Sync(user string, req protocol.SyncRequest) protocol.Page {
	if b.cfg.Observer.Query != nil {
		defer observe(b.cfg.Observer.Query, "sync", time.Now())
	}
	p, err := b.store.Sync(user, storage.HistoryFilter{After: req.After, Limit: req.Limit})
	page := protocol.Page{Type: "sync", ID: req.ID}
	if err != nil {
		return b.queryFailed(page, err)
	}
	page.Messages, page.More = p.Messages, p.More
	b.trimTail(&page)
	if page.More {
		page.NextAfter = page.Messages[len(page.Messages)-1].InboxSeq
	}
	page.Epoch = b.store.Epoch()
	if page.Messages == nil {
		page.Messages = []protocol.Message{}
	}
	return page
}

func observe(f func(string, time.Duration), kind string, start time.Time) { f(kind, time.Since(start)) }

func (b *Bridge) queryFailed(page protocol.Page, err error) protocol.Page {
	b.stats.storeErrors.Add(1)
	b.log.Error("history query", "error", err)
	code := protocol.CodeStoreFailed
	if errors.Is(err, storage.ErrClosed) || errors.Is(err, storage.ErrUnavailable) {
		code = protocol.CodeUnavailable
	}
	page.Error = &protocol.Error{Code: code, Message: err.Error()}
	return page
}

// pageCost estimates the encoded size of a message.
func pageCost(m *protocol.Message) int { return len(m.Data) + 256 }

// trimTail cuts the newest messages of a page until it fits MaxPageBytes,
// keeping at least one.
func (b *Bridge) trimTail(p *protocol.Page) {
	total := 0
	for i := range p.Messages {
		total += pageCost(&p.Messages[i])
		if total > b.cfg.MaxPageBytes && i > 0 {
			p.Messages, p.More = p.Messages[:i], true
			return
		}
	}
}

// trimHead cuts the oldest messages of a page until it fits MaxPageBytes,
// keeping at least one.
func (b *Bridge) trimHead(p *protocol.Page) {
	total := 0
	for i := len(p.Messages) - 1; i >= 0; i-- {
		total += pageCost(&p.Messages[i])
		if total > b.cfg.MaxPageBytes && i < len(p.Messages)-1 {
			p.Messages, p.More = p.Messages[i+1:], true
			return
		}
	}
}
