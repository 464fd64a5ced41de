package flv

// MediaInfo describes a stream's tracks for operators (the cluster API): codecs
// from the sequence headers, picture size and rate and audio format from onMetaData
// and the AAC AudioSpecificConfig. Nil tracks are absent. It is a description, never
// used to route or decode media.
type MediaInfo struct {
	Video *VideoInfo `json:"video,omitempty"`
	Audio *AudioInfo `json:"audio,omitempty"`
	// Tracks lists the video tracks of an Enhanced RTMP multitrack stream, by
	// track id (nil for a single-track stream). Video describes track 0.
	Tracks []TrackInfo `json:"tracks,omitempty"`
}

// TrackInfo is one video track of a multitrack stream, from its sequence header.
type TrackInfo struct {
	ID    int    `json:"id"`
	Codec string `json:"codec"`
}

// VideoInfo is the video track of a MediaInfo. Zero means unknown.
type VideoInfo struct {
	Codec  string  `json:"codec"`
	Width  int     `json:"width"`
	Height int     `json:"height"`
	FPS    float64 `json:"fps"`
}

// AudioInfo is the audio track of a MediaInfo. Zero means unknown.
type AudioInfo struct {
	Codec      string `json:"codec"`
	SampleRate int    `json:"sample_rate"`
	Channels   int    `json:"channels"`
}

// Clone returns a deep copy, for sharing a snapshot of it.
func (m MediaInfo) Clone() MediaInfo {
	if m.Video != nil {
		v := *m.Video
		m.Video = &v
	}
	if m.Audio != nil {
		a := *m.Audio
		m.Audio = &a
	}
	m.Tracks = append([]TrackInfo(nil), m.Tracks...)
	return m
}

func (m *MediaInfo) video() *VideoInfo {
	if m.Video == nil {
		m.Video = &VideoInfo{}
	}
	return m.Video
}

func (m *MediaInfo) audio() *AudioInfo {
	if m.Audio == nil {
		m.Audio = &AudioInfo{}
	}
	return m.Audio
}

// legacy FLV codec ids and Enhanced RTMP FourCCs, by the names operators know.
var (
	videoCodecIDs = map[int]string{2: "h263", 3: "screen", 4: "vp6", 5: "vp6a", 6: "screen2", VideoAVC: "h264", VideoHEVC: "hevc"}
	audioCodecIDs = map[int]string{0: "pcm", 1: "adpcm", 2: "mp3", 3: "pcm", 4: "nellymoser", 5: "nellymoser", 6: "nellymoser",
		7: "g711a", 8: "g711u", AudioAAC: "aac", 11: "speex", 14: "mp3"}
	fourCCs = map[string]string{"avc1": "h264", "hvc1": "hevc", "av01": "av1", "vp09": "vp9", "vp08": "vp8",
		"Opus": "opus", "mp4a": "aac", ".mp3": "mp3", "fLaC": "flac", "ac-3": "ac3", "ec-3": "eac3"}
	aacRates = []int{96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350}
)

// Observe updates m from one tag: metadata, a video sequence header or an audio
// sequence header. Other tags are ignored.
func (m *MediaInfo) Observe(t Tag) {
	body := t.Body()
	switch Classify(t.Type(), body) {
	case KindMetadata:
		md, err := ParseMetadata(body)
		if err != nil {
			return
		}
		m.fromMetadata(md)
	case KindVideoHeader:
		if body[0]&videoExHeaderBit != 0 {
			ex, err := ParseEx(TypeVideo, body, nil)
			if err != nil || len(ex.Packets) == 0 {
				return
			}
			if !ex.Multitrack {
				m.video().Codec = fourCC(ex.Packets[0].FourCC[:])
				return
			}
			for _, p := range ex.Packets {
				m.track(int(p.Track), fourCC(p.FourCC[:]))
				if p.Track == 0 {
					m.video().Codec = fourCC(p.FourCC[:])
				}
			}
		} else if name, ok := videoCodecIDs[int(body[0]&0x0F)]; ok {
			m.video().Codec = name
		}
	case KindAudioHeader:
		if body[0]>>4 == audioExHdr {
			if ex, err := ParseEx(TypeAudio, body, nil); err == nil && len(ex.Packets) > 0 {
				m.audio().Codec = fourCC(ex.Packets[0].FourCC[:])
			}
			return
		}
		a := m.audio()
		a.Codec = "aac"
		// AudioSpecificConfig: objectType(5) frequencyIndex(4) channelConfig(4).
		if len(body) >= 4 {
			if i := int(body[2]&0x07)<<1 | int(body[3]>>7); i < len(aacRates) {
				a.SampleRate = aacRates[i]
			}
			if c := int(body[3]>>3) & 0x0F; c > 0 {
				a.Channels = c
			}
		}
	}
}

// fourCCNumber reads an onMetaData codec id that is a FourCC as a 32-bit number.
func fourCCNumber(id float64) ([]byte, bool) {
	if id < 1<<24 || id >= 1<<32 || id != float64(uint32(id)) {
		return nil, false
	}
	n := uint32(id)
	return []byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}, true
}

// track records a video track's codec, keeping Tracks sorted by id.
func (m *MediaInfo) track(id int, codec string) {
	for i := range m.Tracks {
		if m.Tracks[i].ID == id {
			m.Tracks[i].Codec = codec
			return
		}
	}
	i := 0
	for i < len(m.Tracks) && m.Tracks[i].ID < id {
		i++
	}
	m.Tracks = append(m.Tracks[:i], append([]TrackInfo{{ID: id, Codec: codec}}, m.Tracks[i:]...)...)
}

func fourCC(b []byte) string {
	if name, ok := fourCCs[string(b)]; ok {
		return name
	}
	return string(b)
}

func (m *MediaInfo) fromMetadata(md Metadata) {
	num := func(k string) (float64, bool) { v, ok := md[k].(float64); return v, ok }
	if id, ok := num("videocodecid"); ok {
		v := m.video()
		if name, known := videoCodecIDs[int(id)]; known && v.Codec == "" {
			v.Codec = name
		} else if cc, isFourCC := fourCCNumber(id); isFourCC && v.Codec == "" {
			v.Codec = fourCC(cc) // Enhanced RTMP: the codec id is the FourCC as a number
		}
	}
	if s, ok := md["videocodecid"].(string); ok && m.video().Codec == "" {
		m.video().Codec = fourCC([]byte(s))
	}
	if w, ok := num("width"); ok && w > 0 {
		m.video().Width = int(w)
	}
	if h, ok := num("height"); ok && h > 0 {
		m.video().Height = int(h)
	}
	if f, ok := num("framerate"); ok && f > 0 {
		m.video().FPS = f
	}
	if id, ok := num("audiocodecid"); ok {
		a := m.audio()
		if name, known := audioCodecIDs[int(id)]; known && a.Codec == "" {
			a.Codec = name
		} else if cc, isFourCC := fourCCNumber(id); isFourCC && a.Codec == "" {
			a.Codec = fourCC(cc)
		}
	}
	if r, ok := num("audiosamplerate"); ok && r > 0 && m.audio().SampleRate == 0 {
		m.audio().SampleRate = int(r)
	}
	if st, ok := md["stereo"].(bool); ok && m.audio().Channels == 0 {
		m.audio().Channels = map[bool]int{true: 2, false: 1}[st]
	}
}
