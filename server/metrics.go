package server

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/imbridge/imbridge/bridge"
)

// metrics are the node's Prometheus metrics, in a registry of its own (so
// that an embedding program's default registry is left alone).
type metrics struct {
	reg     *prometheus.Registry
	commit  prometheus.Histogram
	batch   prometheus.Histogram
	queries *prometheus.HistogramVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "imbridge_store_commit_seconds", Help: "Duration of each history commit, fsync included.",
			Buckets: prometheus.ExponentialBuckets(100e-6, 2, 14),
		}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "imbridge_store_commit_messages", Help: "Messages per history commit (group commit).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11),
		}),
		queries: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "imbridge_history_query_seconds", Help: "Duration of history and sync queries, by kind.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 14),
		}, []string{"kind"}),
	}
	m.reg.MustRegister(m.commit, m.batch, m.queries,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observer feeds the histograms from the bridge.
func (m *metrics) observer() bridge.Observer {
	return bridge.Observer{
		Commit: func(d time.Duration, n int) {
			m.commit.Observe(d.Seconds())
			m.batch.Observe(float64(n))
		},
		Query: func(kind string, d time.Duration) { m.queries.WithLabelValues(kind).Observe(d.Seconds()) },
	}
}

// node reads the counters of a running Server at scrape time.
type nodeCollector struct{ s *Server }

var (
	descConnections = prometheus.NewDesc("imbridge_connections", "Connected devices.", nil, nil)
	descSubs        = prometheus.NewDesc("imbridge_subscriptions", "Subscriptions of all sessions.", nil, nil)
	descInflight    = prometheus.NewDesc("imbridge_inflight", "QoS 1 deliveries awaiting a device's PUBACK.", nil, nil)
	descMessages    = prometheus.NewDesc("imbridge_messages_total", "Sends handled, by kind of message and outcome.", []string{"kind", "outcome"}, nil)
	descRejected    = prometheus.NewDesc("imbridge_rejected_total", "Requests and CONNECTs refused for their content, by error code.", []string{"reason"}, nil)
	descRefused     = prometheus.NewDesc("imbridge_connects_refused_total", "CONNECTs refused, by reason.", []string{"reason"}, nil)
	descDrops       = prometheus.NewDesc("imbridge_delivery_drops_total", "Deliveries mochi dropped for a slow device, by the queue that was full.", []string{"queue"}, nil)
	descPanics      = prometheus.NewDesc("imbridge_panics_total", "Connections closed by the panic guard.", nil, nil)
	descSlow        = prometheus.NewDesc("imbridge_slow_consumers_total", "Device connections closed because the device did not read (-max-pending-bytes, -write-timeout).", nil, nil)
	descPruned      = prometheus.NewDesc("imbridge_pruned_total", "Messages removed from the history by the retention.", nil, nil)
	descAcceptErrs  = prometheus.NewDesc("imbridge_accept_errors_total", "Accept errors (EMFILE, ...) of each listener; each is retried.", []string{"listener"}, nil)
	descDegraded    = prometheus.NewDesc("imbridge_listener_degraded", "1 while a listener fails to accept (an error in the last 5 s and no socket since).", []string{"listener"}, nil)
	descPreLogin    = prometheus.NewDesc("imbridge_prelogin_sockets", "MQTT sockets that have not sent a complete CONNECT yet.", nil, nil)
	descSockClosed  = prometheus.NewDesc("imbridge_sockets_closed_total", "Sockets closed before login by the listeners' limits, by reason.", []string{"reason"}, nil)
	descNode        = prometheus.NewDesc("imbridge_node_info", "Always 1; its label node is this node's name (-node).", []string{"node"}, nil)
	descClusterUp   = prometheus.NewDesc("imbridge_cluster_connected", "In a cluster: 1 while the NATS connection is up.", nil, nil)
	descClusterPeer = prometheus.NewDesc("imbridge_cluster_peers", "In a cluster: the other nodes heard of in the last 3 s.", nil, nil)
)

func (c nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descConnections, descSubs, descInflight, descMessages, descRejected, descRefused, descDrops, descPanics, descSlow, descPruned,
		descAcceptErrs, descDegraded, descPreLogin, descSockClosed, descNode, descClusterUp, descClusterPeer} {
		ch <- d
	}
}

func (c nodeCollector) Collect(ch chan<- prometheus.Metric) {
	h := c.s.Health()
	gauge := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(descConnections, h.Clients)
	gauge(descSubs, h.Subs)
	gauge(descInflight, h.Inflight)
	b := h.Bridge
	counter(descMessages, b.Stored, "stored", "stored")
	counter(descMessages, b.Duplicates, "any", "duplicate")
	counter(descMessages, b.StoreErrors, "stored", "store_failed")
	counter(descMessages, b.Delivered, "online", "delivered")
	counter(descMessages, b.Offline, "online", "offline")
	counter(descMessages, b.OnlineDropped, "online", "dropped")
	counter(descMessages, b.Unroutable, "online", "unavailable")
	counter(descMessages, b.Shed, "any", "shed")
	for code, n := range c.s.bridge.Rejected() {
		counter(descRejected, n, string(code))
	}
	counter(descRefused, b.AuthFailures, "auth")
	counter(descRefused, b.ConnectsLimited, "limit")
	counter(descDrops, h.QueueFull, "write")
	counter(descDrops, h.Dropped, "inflight")
	counter(descPanics, h.Panics)
	counter(descSlow, h.Slow)
	counter(descPruned, b.Pruned)
	now := time.Now()
	for _, l := range c.s.gate.listeners() {
		counter(descAcceptErrs, l.errors.Load(), l.id)
		degraded := int64(0)
		if l.degraded(now) {
			degraded = 1
		}
		gauge(descDegraded, degraded, l.id)
	}
	gauge(descPreLogin, h.PreLogin)
	for reason, n := range c.s.gate.refused {
		counter(descSockClosed, n.Load(), reason)
	}
	gauge(descNode, 1, h.Node)
	if h.Cluster != nil {
		up := int64(0)
		if h.Cluster.Connected {
			up = 1
		}
		gauge(descClusterUp, up)
		gauge(descClusterPeer, int64(len(h.Cluster.Peers)))
	}
}

// metricsHandler serves /metrics.
func (s *Server) metricsHandler() http.Handler {
	return promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{})
}
