#include "trainloop/tensorboard/event_writer.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string_view>
#include <system_error>
#include <vector>

#include "../io/byte_order.h"
#include "crc32c.h"
#include "trainloop/error.h"

namespace trainloop::tensorboard {

namespace {

// Field numbers from TensorFlow's event.proto, summary.proto, tensor.proto,
// tensor_shape.proto and histogram.proto.
namespace event_field {
constexpr int kWallTime = 1;
constexpr int kStep = 2;
constexpr int kFileVersion = 3;
constexpr int kSummary = 5;
}  // namespace event_field
namespace summary_field {
constexpr int kValue = 1;
}  // namespace summary_field
namespace value_field {
constexpr int kTag = 1;
constexpr int kSimpleValue = 2;
constexpr int kHisto = 5;
constexpr int kTensor = 8;
constexpr int kMetadata = 9;
}  // namespace value_field
namespace metadata_field {
constexpr int kPluginData = 1;
constexpr int kDataClass = 4;
constexpr int kPluginName = 1;       // in PluginData
constexpr int kDataClassTensor = 2;  // DataClass enum
}  // namespace metadata_field
namespace tensor_field {
constexpr int kDtype = 1;
constexpr int kShape = 2;
constexpr int kStringVal = 8;
constexpr int kDtString = 7;  // DataType enum
}  // namespace tensor_field
namespace histogram_field {
constexpr int kMin = 1;
constexpr int kMax = 2;
constexpr int kNum = 3;
constexpr int kSum = 4;
constexpr int kSumSquares = 5;
constexpr int kBucketLimit = 6;
constexpr int kBucket = 7;
}  // namespace histogram_field

constexpr const char* kFileVersion = "brain.Event:2";

enum WireType { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

using io::append_little_endian;

// A protocol buffer message built field by field in wire format.
class Message {
 public:
  Message& varint(int field, uint64_t value) {
    key(field, kVarint);
    raw_varint(value);
    return *this;
  }
  // int64 fields are varints of the two's-complement value (10 bytes when negative).
  Message& int64(int field, int64_t value) { return varint(field, static_cast<uint64_t>(value)); }
  Message& float64(int field, double value) {
    key(field, kFixed64);
    raw_double(value);
    return *this;
  }
  Message& float32(int field, float value) {
    key(field, kFixed32);
    uint32_t bits = 0;
    std::memcpy(&bits, &value, sizeof bits);
    append_little_endian(bytes_, bits, 4);
    return *this;
  }
  Message& bytes(int field, std::string_view data) {
    key(field, kLengthDelimited);
    raw_varint(data.size());
    bytes_.append(data.data(), data.size());
    return *this;
  }
  Message& message(int field, const Message& inner) { return bytes(field, inner.bytes_); }
  // Repeated doubles as one packed field, as proto3 writes them.
  Message& packed_doubles(int field, const std::vector<double>& values) {
    key(field, kLengthDelimited);
    raw_varint(values.size() * 8);
    for (const double v : values) raw_double(v);
    return *this;
  }
  const std::string& str() const { return bytes_; }

 private:
  void key(int field, WireType type) {
    raw_varint(static_cast<uint64_t>(field) << 3 | static_cast<uint64_t>(type));
  }
  void raw_varint(uint64_t value) {
    while (value >= 0x80) {
      bytes_ += static_cast<char>((value & 0x7Fu) | 0x80u);
      value >>= 7;
    }
    bytes_ += static_cast<char>(value);
  }
  void raw_double(double value) {
    uint64_t bits = 0;
    std::memcpy(&bits, &value, sizeof bits);
    append_little_endian(bytes_, bits, 8);
  }

  std::string bytes_;
};

Message event_header(double wall_time, int64_t step) {
  Message header;
  header.float64(event_field::kWallTime, wall_time);
  if (step != 0) header.int64(event_field::kStep, step);  // proto3 leaves defaults out
  return header;
}

std::string summary_event(const Message& value, int64_t step, std::optional<double> wall_time) {
  Message summary;
  summary.message(summary_field::kValue, value);
  return event_header(wall_time.value_or(EventWriter::now()), step)
      .message(event_field::kSummary, summary)
      .str();
}

std::string host_name() {
  std::array<char, 256> name{};
  if (gethostname(name.data(), name.size() - 1) != 0 || name[0] == '\0') return "localhost";
  return name.data();
}

std::string error_text(int error) { return std::generic_category().message(error); }

}  // namespace

double EventWriter::now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

EventWriter::EventWriter(const std::string& directory, const std::string& file_name) {
  std::error_code error;
  std::filesystem::create_directories(directory, error);
  if (error) {
    throw Error(
        fmt::format("{}: cannot create the event file directory: {}", directory, error.message()));
  }
  const double wall_time = now();
  std::string name = file_name;
  if (name.empty()) {
    // Process-wide, so two writers opened in the same second in one directory
    // (train and validation of two quick fits) never share a name.
    static std::atomic<uint64_t> counter{0};
    name = fmt::format("events.out.tfevents.{}.{}.{}.{}", static_cast<int64_t>(wall_time),
                       host_name(), getpid(), counter++);
  }
  path_ = (std::filesystem::path(directory) / name).string();
  file_ = std::fopen(path_.c_str(), "wb");
  if (file_ == nullptr) {
    throw Error(fmt::format("{}: cannot create the event file: {}", path_, error_text(errno)));
  }
  // Big enough that a training step's few scalars never reach the disk one
  // write() at a time; flush() sends them at epoch ends.
  std::setvbuf(file_, nullptr, _IOFBF, 1 << 16);
  try {
    write_event(event_header(wall_time, 0).bytes(event_field::kFileVersion, kFileVersion).str());
    flush();
  } catch (...) {
    std::fclose(file_);
    file_ = nullptr;
    throw;
  }
}

EventWriter::~EventWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

void EventWriter::check_open() const {
  if (file_ == nullptr) throw Error(fmt::format("{}: the event file is closed", path_));
}

void EventWriter::write_event(const std::string& event) {
  check_open();
  // TFRecord: length, masked CRC of the length bytes, data, masked CRC of the data.
  std::string record;
  record.reserve(event.size() + 16);
  append_little_endian(record, event.size(), 8);
  append_little_endian(record, mask_crc32c(crc32c(record.data(), 8)), 4);
  record += event;
  append_little_endian(record, mask_crc32c(crc32c(event)), 4);
  // One call per record: the buffer then holds only whole records, and a
  // kill can cut at most the one record being written.
  if (std::fwrite(record.data(), 1, record.size(), file_) != record.size()) {
    throw Error(fmt::format("{}: cannot write an event record: {}", path_, error_text(errno)));
  }
}

void EventWriter::add_scalar(const std::string& tag, double value, int64_t step,
                             std::optional<double> wall_time) {
  check_open();
  Message summary_value;
  summary_value.bytes(value_field::kTag, tag)
      .float32(value_field::kSimpleValue, static_cast<float>(value));
  write_event(summary_event(summary_value, step, wall_time));
}

void EventWriter::add_histogram(const std::string& tag, const torch::Tensor& values, int64_t step,
                                std::optional<double> wall_time) {
  check_open();
  std::vector<double> finite;
  if (values.defined() && values.numel() > 0) {
    const torch::Tensor flat =
        values.detach().reshape({-1}).to(torch::kCPU, torch::kDouble).contiguous();
    const double* data = flat.data_ptr<double>();
    finite.reserve(static_cast<size_t>(flat.numel()));
    for (int64_t i = 0; i < flat.numel(); ++i) {
      if (std::isfinite(data[i])) finite.push_back(data[i]);
    }
  }
  double min = 0;
  double max = 0;
  double sum = 0;
  double sum_squares = 0;
  if (!finite.empty()) {
    const auto [low, high] = std::minmax_element(finite.begin(), finite.end());
    min = *low;
    max = *high;
  }
  for (const double v : finite) {
    sum += v;
    sum_squares += v * v;
  }
  // TensorBoard draws bucket i from bucket_limit[i-1] (min for the first) to
  // bucket_limit[i] (max for the last), so the last limit is max itself. A
  // constant tensor (or none) gets one bucket: there is no width to split.
  std::vector<double> limits;
  std::vector<double> counts;
  if (finite.empty() || !(max > min)) {
    limits = {max};
    counts = {static_cast<double>(finite.size())};
  } else {
    const double width = (max - min) / kHistogramBuckets;
    limits.resize(kHistogramBuckets);
    counts.assign(kHistogramBuckets, 0.0);
    for (int i = 0; i < kHistogramBuckets; ++i) limits[i] = min + width * (i + 1);
    limits.back() = max;
    for (const double v : finite) {
      const auto index = static_cast<int>((v - min) / width);
      counts[std::clamp(index, 0, kHistogramBuckets - 1)] += 1;
    }
  }
  Message histo;
  histo.float64(histogram_field::kMin, min)
      .float64(histogram_field::kMax, max)
      .float64(histogram_field::kNum, static_cast<double>(finite.size()))
      .float64(histogram_field::kSum, sum)
      .float64(histogram_field::kSumSquares, sum_squares)
      .packed_doubles(histogram_field::kBucketLimit, limits)
      .packed_doubles(histogram_field::kBucket, counts);
  Message summary_value;
  summary_value.bytes(value_field::kTag, tag).message(value_field::kHisto, histo);
  write_event(summary_event(summary_value, step, wall_time));
}

void EventWriter::add_text(const std::string& tag, const std::string& text, int64_t step,
                           std::optional<double> wall_time) {
  check_open();
  Message plugin;
  plugin.bytes(metadata_field::kPluginName, "text");
  Message meta;
  meta.message(metadata_field::kPluginData, plugin)
      .varint(metadata_field::kDataClass, metadata_field::kDataClassTensor);
  // A scalar string tensor (empty shape), as tf.summary.text writes it.
  Message string_tensor;
  string_tensor.varint(tensor_field::kDtype, tensor_field::kDtString)
      .message(tensor_field::kShape, Message())
      .bytes(tensor_field::kStringVal, text);
  Message summary_value;
  summary_value.bytes(value_field::kTag, tag)
      .message(value_field::kMetadata, meta)
      .message(value_field::kTensor, string_tensor);
  write_event(summary_event(summary_value, step, wall_time));
}

std::unique_ptr<EventWriter> EventWriter::resume(const std::string& path, int64_t length) {
  std::unique_ptr<EventWriter> writer(new EventWriter());
  writer->path_ = path;
  writer->file_ = std::fopen(path.c_str(), "r+b");
  if (writer->file_ == nullptr) {
    throw Error(fmt::format("{}: cannot continue the event file: {}", path, error_text(errno)));
  }
  // Before any other operation on the stream, as setvbuf requires.
  std::setvbuf(writer->file_, nullptr, _IOFBF, 1 << 16);
  struct stat info {};
  const int fd = fileno(writer->file_);
  if (fstat(fd, &info) != 0 || info.st_size < length || length < 0) {
    throw Error(fmt::format("{}: {} bytes, but the checkpoint was taken when it had {}: this is "
                            "not the event file that fit wrote",
                            path, static_cast<int64_t>(info.st_size), length));
  }
  if (ftruncate(fd, length) != 0 || std::fseek(writer->file_, 0, SEEK_END) != 0) {
    throw Error(fmt::format("{}: cannot cut back the event file: {}", path, error_text(errno)));
  }
  return writer;
}

int64_t EventWriter::flushed_length() {
  flush();
  fdatasync(fileno(file_));
  return static_cast<int64_t>(std::ftell(file_));
}

void EventWriter::flush() {
  check_open();
  if (std::fflush(file_) != 0) {
    throw Error(fmt::format("{}: cannot write the event file: {}", path_, error_text(errno)));
  }
}

void EventWriter::close() {
  if (file_ == nullptr) return;
  std::FILE* file = file_;
  file_ = nullptr;
  const bool flushed = std::fflush(file) == 0;
  const int flush_error = errno;
  const bool closed = std::fclose(file) == 0;
  const int close_error = errno;
  if (!flushed || !closed) {
    throw Error(fmt::format("{}: cannot write the event file: {}", path_,
                            error_text(flushed ? close_error : flush_error)));
  }
}

}  // namespace trainloop::tensorboard
