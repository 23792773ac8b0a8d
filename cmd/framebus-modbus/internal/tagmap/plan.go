package tagmap

import (
	"cmp"
	"fmt"
	"slices"
)

// Protocol limits of one read request.
const (
	MaxReadRegisters = 125  // FC 3 and 4
	MaxReadBits      = 2000 // FC 1 and 2
)

// Group is one read request: Count registers (or bits) of Kind from Start,
// covering the tags Tags (indices into the slice given to Groups).
type Group struct {
	Kind  Kind
	Start uint16
	Count uint16
	Tags  []int
}

func (g Group) String() string {
	return fmt.Sprintf("%s %d..%d (%d tags)", g.Kind, g.Start, int(g.Start)+int(g.Count)-1, len(g.Tags))
}

// Groups plans the reads of tags (one device's, validated) with at most
// maxGap unmapped registers inside one request; see the package doc. The
// groups are ordered by kind (coil, discrete, holding, input) and address.
func Groups(tags []*Tag, maxGap int) []Group {
	idx := make([]int, len(tags))
	for i := range idx {
		idx[i] = i
	}
	order := map[Kind]int{Coil: 0, Discrete: 1, Holding: 2, Input: 3}
	slices.SortStableFunc(idx, func(a, b int) int {
		if c := cmp.Compare(order[tags[a].Kind], order[tags[b].Kind]); c != 0 {
			return c
		}
		return cmp.Compare(tags[a].Address, tags[b].Address)
	})
	var gs []Group
	end := 0 // one past the last register of the current group
	for _, i := range idx {
		t := tags[i]
		limit := MaxReadRegisters
		if t.Kind.IsBit() {
			limit = MaxReadBits
		}
		tend := t.Address + t.Words()
		if n := len(gs); n > 0 {
			g := &gs[n-1]
			if g.Kind == t.Kind && t.Address <= end+maxGap && max(end, tend)-int(g.Start) <= limit {
				end = max(end, tend)
				g.Count = uint16(end - int(g.Start))
				g.Tags = append(g.Tags, i)
				continue
			}
		}
		gs = append(gs, Group{Kind: t.Kind, Start: uint16(t.Address), Count: uint16(t.Words()), Tags: []int{i}})
		end = tend
	}
	return gs
}
