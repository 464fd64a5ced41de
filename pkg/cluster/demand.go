package cluster

// Demand returns how many viewers the edges reported for stream name in their last
// reports, whether or not any origin publishes it. Origins that pull on demand use
// it to stop a pull a linger period after the last viewer anywhere, and to take a
// pull over when its origin died while edges still hold viewers.
func (v *View) Demand(name string) int {
	n := 0
	for _, r := range v.live() {
		for _, s := range r.Served {
			if s.Name == name {
				n += s.Viewers
			}
		}
	}
	return n
}
