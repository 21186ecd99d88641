// The imbridge browser demo: MQTT.js over WebSocket, plain DOM, no build.
// Parameters come from the URL fragment, so tokens never reach a server log:
//   /demo/#user=alice&peer=bob&token=TOKEN[&ws=ws://host:8083/mqtt]
'use strict';

const TYPING_EVERY = 3000;   // send at most one typing indicator this often (ms)
const TYPING_TIMEOUT = 5000; // show "is typing…" this long after the last one (ms)

const params = new URLSearchParams(location.hash.slice(1));
const $ = (id) => document.getElementById(id);

if (!params.get('user') || !params.get('peer') || !params.get('token')) {
  $('login').hidden = false;
  $('login').addEventListener('submit', (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    location.hash = new URLSearchParams({ user: f.get('user'), peer: f.get('peer'), token: f.get('token') });
    location.reload();
  });
} else {
  start(params.get('user'), params.get('peer'), params.get('token'),
    params.get('ws') || `ws://${location.hostname}:8083/mqtt`);
}

function start(me, peer, token, wsURL) {
  $('chat').hidden = false;
  $('title').textContent = `${me} ↔ ${peer}`;
  const shown = new Set();     // ids of messages on screen
  let lastFromPeer = 0;        // server time of peer's last message: older indicators are stale
  let typingTimer = null;
  let lastTypingSent = 0;
  let cursor = 0;              // highest inboxSeq seen, to notice gaps
  let nextId = 0;
  const newId = () => `web-${Date.now().toString(36)}-${++nextId}`;

  function render(m, pending) {
    const li = document.createElement('li');
    li.className = (m.from === me ? 'mine' : 'theirs') + (pending ? ' pending' : '');
    li.dataset.from = m.from;
    li.dataset.id = m.clientMsgId || m.id;
    const span = document.createElement('span');
    span.textContent = (m.data && m.data.text) || JSON.stringify(m.data);
    li.append(span);
    $('messages').append(li);
    return li;
  }

  function showStored(m) {
    if (shown.has(m.id)) return;
    const inConversation = (m.from === me && m.to === peer) || (m.from === peer && m.to === me);
    if (!inConversation) return;
    shown.add(m.id);
    const pending = m.clientMsgId && document.querySelector(`li.pending[data-id="${m.clientMsgId}"]`);
    if (pending) { pending.classList.remove('pending'); pending.dataset.id = m.id; } else render(m, false);
    if (m.from === peer) { lastFromPeer = Math.max(lastFromPeer, m.time); setTyping(false); }
  }

  function setTyping(on) {
    clearTimeout(typingTimer);
    $('typing').textContent = on ? `${peer} is typing…` : '';
    if (on) typingTimer = setTimeout(() => setTyping(false), TYPING_TIMEOUT);
  }

  // History on open, oldest first.
  fetch(`/v1/history?with=${encodeURIComponent(peer)}&limit=50`, { headers: { Authorization: `Bearer ${token}` } })
    .then((r) => r.json())
    .then((page) => (page.messages || []).forEach(showStored))
    .catch((err) => console.error('history', err));

  const client = mqtt.connect(wsURL, { username: me, password: token, clientId: newId(), clean: true });
  client.on('connect', () => {
    client.subscribe({
      [`users/${me}/inbox`]: { qos: 1 },
      [`$share/${me}/users/${me}/online`]: { qos: 0 },
      [`users/${me}/reply`]: { qos: 1 },
    }, (err) => {
      $('status').textContent = err ? 'subscribe failed' : 'connected';
      $('status').className = err ? '' : 'connected';
    });
  });
  client.on('close', () => { $('status').textContent = 'reconnecting…'; $('status').className = ''; });
  client.on('message', (topic, payload) => {
    const m = JSON.parse(payload.toString());
    if (topic.endsWith('/online')) {
      const cmd = m.data && m.data.command;
      if (m.from === peer && cmd === 'textInput' && m.time > lastFromPeer) setTyping(true);
      if (m.from === peer && cmd === 'textInputStop') setTyping(false);
      return; // online-only messages are never kept
    }
    if (topic.endsWith('/inbox')) {
      if (cursor && m.inboxSeq > cursor + 1) sync(cursor); // a gap: fetch what was missed
      cursor = Math.max(cursor, m.inboxSeq);
      showStored(m);
    } else if (m.type === 'sync') {
      m.messages.forEach(showStored);
      if (m.more) sync(m.nextAfter);
    }
  });

  function sync(after) {
    client.publish(`users/${me}/sync`, JSON.stringify({ id: newId(), after }), { qos: 1 });
  }

  const publish = (body) => client.publish(`users/${me}/send`, JSON.stringify(body), { qos: 1 });

  $('input').addEventListener('input', () => {
    const now = Date.now();
    if ($('input').value && now - lastTypingSent >= TYPING_EVERY) {
      lastTypingSent = now;
      publish({ to: peer, onlineUserOnly: true, data: { command: 'textInput' } });
    }
  });
  $('compose').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = $('input').value.trim();
    if (!text) return;
    const id = newId();
    render({ from: me, to: peer, clientMsgId: id, data: { text } }, true);
    publish({ to: peer, data: { text }, id });
    $('input').value = '';
    lastTypingSent = 0;
  });
}
