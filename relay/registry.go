package relay

import (
	"errors"
	"fmt"
	"slices"
	"sync"
)

// ErrNameTaken reports a Register under a name that is already registered.
var ErrNameTaken = errors.New("name already registered")

// Registry maps names to processes, like the tutorial's process.registry: clients address the
// relay as "relay", not by where it lives.
type Registry[T any] struct {
	mu    sync.RWMutex
	names map[string]T // guarded by mu
}

// Register records v under name.
func (r *Registry[T]) Register(name string, v T) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.names[name]; ok {
		return fmt.Errorf("registering %q: %w", name, ErrNameTaken)
	}
	if r.names == nil {
		r.names = make(map[string]T)
	}
	r.names[name] = v
	return nil
}

// Unregister removes name.
func (r *Registry[T]) Unregister(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.names, name)
}

// Lookup returns what is registered under name.
func (r *Registry[T]) Lookup(name string) (T, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	v, ok := r.names[name]
	return v, ok
}

// Names returns the registered names, sorted.
func (r *Registry[T]) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	names := make([]string, 0, len(r.names))
	for n := range r.names {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
