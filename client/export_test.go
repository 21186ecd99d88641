package client

// SetIDGenerator makes clients dialled with cfg generate message ids with f.
func SetIDGenerator(cfg *Config, f func() string) {
	if cfg.hooks == nil {
		cfg.hooks = &testHooks{}
	}
	cfg.hooks.newMessageID = f
}

// SetConnectionHooks makes clients dialled with cfg call subscribed in
// their connect handler between the SUBACK and marking the client up, and
// lost at the end of their connection-lost handler.
func SetConnectionHooks(cfg *Config, subscribed, lost func()) {
	if cfg.hooks == nil {
		cfg.hooks = &testHooks{}
	}
	cfg.hooks.subscribed, cfg.hooks.lost = subscribed, lost
}
