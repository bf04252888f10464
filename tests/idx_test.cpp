#include "trainloop/data/idx.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "support/test_support.h"
#include "trainloop/error.h"

namespace {

namespace fs = std::filesystem;
using testing::HasSubstr;
using testing::ThrowsMessage;
using trainloop::Error;
using trainloop::data::read_idx;
using trainloop::data::read_idx_dataset;

// The header of an IDX file: magic, then each dimension, all big-endian.
std::string idx_header(uint8_t type, const std::vector<uint32_t>& dims) {
  std::string bytes = {0, 0, static_cast<char>(type), static_cast<char>(dims.size())};
  for (const uint32_t d : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) bytes.push_back(static_cast<char>(d >> shift));
  }
  return bytes;
}

std::string big_endian(uint64_t value, int bytes) {
  std::string out;
  for (int shift = 8 * (bytes - 1); shift >= 0; shift -= 8) {
    out.push_back(static_cast<char>(value >> shift));
  }
  return out;
}

// A gzip file (RFC 1952) holding `bytes`, written by zlib at level 0, so
// the deflate stream is made of stored blocks a test can corrupt precisely.
std::string gzip(const std::string& bytes) {
  z_stream stream{};
  constexpr int kGzipWindowBits = 15 + 16;
  EXPECT_EQ(deflateInit2(&stream, Z_NO_COMPRESSION, Z_DEFLATED, kGzipWindowBits, 8,
                         Z_DEFAULT_STRATEGY),
            Z_OK);
  std::string out(deflateBound(&stream, bytes.size()), '\0');
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data()));
  stream.avail_in = static_cast<uInt>(bytes.size());
  stream.next_out = reinterpret_cast<Bytef*>(out.data());
  stream.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&stream, Z_FINISH), Z_STREAM_END);
  out.resize(stream.total_out);
  deflateEnd(&stream);
  return out;
}

class IdxTest : public testing::Test {
 protected:

  std::string write_plain(const std::string& name, const std::string& bytes) {
    const std::string path = (scratch_.path / name).string();
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }

  std::string write_gzip(const std::string& name, const std::string& bytes) {
    return write_plain(name, gzip(bytes));
  }

  static std::string read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  trainloop::testing_support::TempDir scratch_;
};

TEST_F(IdxTest, ReadsUint8PlainAndGzip) {
  const std::string bytes = idx_header(0x08, {2, 3}) + std::string{1, 2, 3, 4, 5, '\xff'};
  const torch::Tensor expected =
      torch::tensor({1, 2, 3, 4, 5, 255}, torch::kUInt8).view({2, 3});
  for (const std::string& path :
       {write_plain("a-idx2-ubyte", bytes), write_gzip("a-idx2-ubyte.gz", bytes)}) {
    const torch::Tensor t = read_idx(path);
    EXPECT_EQ(t.scalar_type(), torch::kUInt8) << path;
    EXPECT_TRUE(torch::equal(t, expected)) << path;
  }
}

TEST_F(IdxTest, DecodesBigEndianTypes) {
  const std::string int32 = idx_header(0x0c, {3}) + big_endian(0x01020304, 4) +
                            big_endian(0xfffffffe, 4) + big_endian(0x7fffffff, 4);
  const torch::Tensor ints = read_idx(write_gzip("int32.gz", int32));
  EXPECT_EQ(ints.scalar_type(), torch::kInt32);
  EXPECT_TRUE(torch::equal(ints, torch::tensor({0x01020304, -2, 0x7fffffff}, torch::kInt32)));

  // 1.5f is 0x3fc00000 and -2.25f is 0xc0100000 in IEEE 754.
  const std::string float32 =
      idx_header(0x0d, {1, 2}) + big_endian(0x3fc00000, 4) + big_endian(0xc0100000, 4);
  const torch::Tensor floats = read_idx(write_plain("float32", float32));
  EXPECT_EQ(floats.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(floats, torch::tensor({{1.5f, -2.25f}})));

  const std::string others = idx_header(0x0b, {2}) + big_endian(0x0102, 2) + big_endian(0xff00, 2);
  EXPECT_TRUE(torch::equal(read_idx(write_plain("int16", others)),
                           torch::tensor({0x0102, -256}, torch::kInt16)));
  // 0.1 is 0x3fb999999999999a in IEEE 754 double.
  const std::string float64 = idx_header(0x0e, {1}) + big_endian(0x3fb999999999999aULL, 8);
  EXPECT_EQ(read_idx(write_plain("float64", float64)).item<double>(), 0.1);
  const std::string int8 = idx_header(0x09, {2}) + std::string{'\x80', 5};
  EXPECT_TRUE(torch::equal(read_idx(write_plain("int8", int8)),
                           torch::tensor({-128, 5}, torch::kInt8)));
}

TEST_F(IdxTest, ReadsEmptyDimension) {
  const torch::Tensor t = read_idx(write_plain("empty", idx_header(0x08, {0, 28, 28})));
  EXPECT_EQ(t.sizes(), (std::vector<int64_t>{0, 28, 28}));
}

// Found by fuzz/idx_fuzzer: an empty tensor whose other dimensions multiply
// past int64 made LibTorch's own size check throw from deep inside.
TEST_F(IdxTest, EmptyTensorWithHugeOtherDimensionsIsAnError) {
  const std::string path =
      write_plain("huge_empty", idx_header(0x08, {12648447, 4294967295u, 0, 33554432}));
  EXPECT_THAT([&] { read_idx(path); }, ThrowsMessage<Error>(HasSubstr("describe more than")));
}

TEST_F(IdxTest, ReadsDataset) {
  const std::string images = write_gzip(
      "images.gz", idx_header(0x08, {3, 2, 2}) + std::string(4, 0) + std::string(4, '\xff') +
                       std::string{0, 51, 102, '\xcc'});
  const std::string labels =
      write_plain("labels", idx_header(0x08, {3}) + std::string{7, 0, 9});
  const auto data = read_idx_dataset(images, labels);
  EXPECT_EQ(data.inputs.scalar_type(), torch::kFloat32);
  EXPECT_EQ(data.inputs.sizes(), (std::vector<int64_t>{3, 1, 2, 2}));
  EXPECT_TRUE(torch::allclose(data.inputs[2].flatten(), torch::tensor({0.0f, 0.2f, 0.4f, 0.8f})));
  EXPECT_EQ(data.inputs[1].min().item<float>(), 1.0f);
  EXPECT_EQ(data.targets.scalar_type(), torch::kInt64);
  EXPECT_TRUE(torch::equal(data.targets, torch::tensor({7, 0, 9}, torch::kInt64)));
}

TEST_F(IdxTest, MissingFile) {
  const std::string path = (scratch_.path / "nothing-idx3-ubyte.gz").string();
  EXPECT_THAT([&] { read_idx(path); },
              ThrowsMessage<Error>(HasSubstr(path + ": cannot open: No such file or directory")));
  EXPECT_THAT([&] { read_idx((scratch_.path / "nothing").string()); },
              ThrowsMessage<Error>(HasSubstr("No such file or directory")));
}

// A FIFO, a device or a directory is refused before an open that could
// block: opening a FIFO waits for a writer, forever.
TEST_F(IdxTest, RefusesWhatIsNotARegularFile) {
  using trainloop::testing_support::error_reading_fifo;
  for (const std::string name : {"images-idx3-ubyte", "images-idx3-ubyte.gz"}) {
    const fs::path fifo = scratch_.path / name;
    trainloop::testing_support::make_fifo(fifo);
    EXPECT_EQ(error_reading_fifo(fifo, [&] { read_idx(fifo.string()); }),
              fifo.string() + ": not a regular file (a FIFO)");
  }
  EXPECT_THAT([&] { read_idx("/dev/zero"); },
              ThrowsMessage<Error>(HasSubstr("/dev/zero: not a regular file (a character device)")));
  EXPECT_THAT([&] { read_idx(scratch_.path.string()); },
              ThrowsMessage<Error>(HasSubstr(": not a regular file (a directory)")));
}

TEST_F(IdxTest, WrongMagic) {
  const std::string labels = write_plain("labels", idx_header(0x08, {2}) + std::string{1, 2});
  EXPECT_THAT([&] { read_idx_dataset(labels, labels); },
              ThrowsMessage<Error>(
                  HasSubstr(labels + ": magic 0x00000801, expected 0x00000803")));
}

TEST_F(IdxTest, MagicWithoutLeadingZeros) {
  const std::string path = write_plain("bad", std::string{0x12, 0x34, 0x56, 0x78, 0, 0});
  EXPECT_THAT([&] { read_idx(path); },
              ThrowsMessage<Error>(HasSubstr(
                  path + ": magic 0x12345678: expected two zero bytes, a type byte and a "
                         "dimension count")));
}

TEST_F(IdxTest, UnknownTypeByte) {
  const std::string path = write_plain("bad", idx_header(0x0a, {1}) + std::string(1, 0));
  EXPECT_THAT([&] { read_idx(path); },
              ThrowsMessage<Error>(HasSubstr(path + ": magic 0x00000a01: type byte 0x0a")));
}

TEST_F(IdxTest, BadDimensionCount) {
  const std::string none = write_plain("none", idx_header(0x08, {}));
  EXPECT_THAT([&] { read_idx(none); },
              ThrowsMessage<Error>(HasSubstr("0 dimensions, expected 1 to 8")));
  const std::string many = write_plain("many", idx_header(0x08, std::vector<uint32_t>(9, 1)));
  EXPECT_THAT([&] { read_idx(many); },
              ThrowsMessage<Error>(HasSubstr("9 dimensions, expected 1 to 8")));
}

TEST_F(IdxTest, TruncatedData) {
  const std::string bytes = idx_header(0x08, {2, 5}) + std::string(6, 1);
  for (const std::string& path : {write_plain("short", bytes), write_gzip("short.gz", bytes)}) {
    EXPECT_THAT([&] { read_idx(path); },
                ThrowsMessage<Error>(
                    HasSubstr(path + ": truncated: expected 10 bytes of data, found 6")));
  }
  // A gzip stream cut short: zlib hands over what it has, then the length check speaks.
  const std::string whole = gzip(idx_header(0x08, {2, 5}) + std::string(10, 1));
  const std::string cut = write_plain("cut.gz", whole.substr(0, whole.size() - 12));
  EXPECT_THAT([&] { read_idx(cut); },
              ThrowsMessage<Error>(
                  HasSubstr(cut + ": truncated: expected 10 bytes of data, found 6")));
  const std::string header_only = write_plain("header", std::string{0, 0, 8, 3, 0, 0});
  EXPECT_THAT([&] { read_idx(header_only); },
              ThrowsMessage<Error>(HasSubstr("truncated: expected 12 bytes of dimensions")));
}

// Every byte of the data is there but not the end of the gzip stream, so
// nothing checked it: corrupt all the same.
TEST_F(IdxTest, GzipCutAfterTheData) {
  const std::string whole = gzip(idx_header(0x08, {2}) + std::string(2, 1));
  const std::string path = write_plain("cut.gz", whole.substr(0, whole.size() - 4));
  EXPECT_THAT([&] { read_idx(path); },
              ThrowsMessage<Error>(HasSubstr(path + ": gzip error: unexpected end of file")));
}

TEST_F(IdxTest, TrailingData) {
  const std::string path = write_plain("long", idx_header(0x08, {2}) + std::string(3, 1));
  EXPECT_THAT([&] { read_idx(path); },
              ThrowsMessage<Error>(HasSubstr("more data than the 2 bytes its dimensions describe")));
}

TEST_F(IdxTest, CountMismatch) {
  const std::string images =
      write_plain("images", idx_header(0x08, {3, 2, 2}) + std::string(12, 0));
  const std::string labels = write_plain("labels", idx_header(0x08, {2}) + std::string(2, 0));
  EXPECT_THAT([&] { read_idx_dataset(images, labels); },
              ThrowsMessage<Error>(
                  HasSubstr(images + " holds 3 images, but " + labels +
                            " holds 2 labels, expected one per image")));
}

TEST_F(IdxTest, GzNameWithoutGzipData) {
  const std::string path = write_plain("plain.gz", idx_header(0x08, {1}) + std::string(1, 0));
  EXPECT_THAT([&] { read_idx(path); },
              ThrowsMessage<Error>(HasSubstr(
                  path + ": not a gzip file (starts with 00 00, expected 1f 8b)")));
}

TEST_F(IdxTest, CorruptGzipData) {
  std::string data;
  for (int i = 0; i < 4096; ++i) data.push_back(static_cast<char>((i * 7919) >> 3));
  std::string gz = read_bytes(write_gzip("good.gz", idx_header(0x08, {4096}) + data));
  // Garble one data byte: only the CRC-32 at the end can tell.
  gz[100] = static_cast<char>(gz[100] ^ 0x5a);
  const std::string path = write_plain("bad.gz", gz);
  EXPECT_THAT([&] { read_idx(path); },
              ThrowsMessage<Error>(HasSubstr(path + ": gzip error: incorrect data check")));
  // A broken block header (stored length and its complement disagree).
  gz = read_bytes(write_gzip("good.gz", idx_header(0x08, {4096}) + data));
  gz[12] = static_cast<char>(gz[12] ^ 0x01);
  const std::string block = write_plain("block.gz", gz);
  EXPECT_THAT([&] { read_idx(block); },
              ThrowsMessage<Error>(HasSubstr(block + ": gzip error: invalid stored block lengths")));
}

TEST_F(IdxTest, AbsurdDimensions) {
  // 10^15 bytes: past the cap, so rejected from the header alone.
  const std::string huge =
      write_plain("huge", idx_header(0x08, {100000, 100000, 100000}) + std::string(10, 0));
  EXPECT_THAT([&] { read_idx(huge); },
              ThrowsMessage<Error>(HasSubstr(
                  "dimensions [100000, 100000, 100000] describe more than")));
  // A product that overflows 64 bits must not wrap around into a small number.
  const std::string wrap = write_plain(
      "wrap", idx_header(0x0e, {0xffffffff, 0xffffffff, 0xffffffff, 16}) + std::string(8, 0));
  EXPECT_THAT([&] { read_idx(wrap); }, ThrowsMessage<Error>(HasSubstr("describe more than")));

  // 4 GB: under the cap, so only the missing data can reject it. This must
  // fail quickly, without first allocating what the header claims.
  const auto start = std::chrono::steady_clock::now();
  const std::string big =
      write_gzip("big.gz", idx_header(0x08, {4, 1000, 1000, 1000}) + std::string(3, 0));
  EXPECT_THAT([&] { read_idx(big); },
              ThrowsMessage<Error>(
                  HasSubstr("truncated: expected 4000000000 bytes of data, found 3")));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
}

TEST(IdxDatasetTest, ReadsFashionMnist) {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  ASSERT_TRUE(fs::exists(dir)) << dir << " is missing: install the dataset-fashion-mnist package";
  const auto [train, test] = trainloop::data::fashion_mnist(dir);
  EXPECT_EQ(train.inputs.sizes(), (std::vector<int64_t>{60000, 1, 28, 28}));
  EXPECT_EQ(test.inputs.sizes(), (std::vector<int64_t>{10000, 1, 28, 28}));
  EXPECT_EQ(train.targets.sizes(), (std::vector<int64_t>{60000}));
  EXPECT_EQ(test.targets.sizes(), (std::vector<int64_t>{10000}));
  for (const auto* data : {&train, &test}) {
    EXPECT_GE(data->inputs.min().item<float>(), 0.0f);
    EXPECT_LE(data->inputs.max().item<float>(), 1.0f);
    EXPECT_GT(data->inputs.max().item<float>(), 0.99f);  // scaled, not left in 0..255 or 0..1/255
    EXPECT_EQ(data->targets.min().item<int64_t>(), 0);
    EXPECT_EQ(data->targets.max().item<int64_t>(), 9);
  }
  EXPECT_TRUE(torch::equal(torch::bincount(train.targets, {}, 10),
                           torch::full({10}, 6000, torch::kLong)));
}

// fashion_mnist() checks what the files hold, naming the file, where
// read_idx_dataset takes any size and any label.
TEST_F(IdxTest, FashionMnistChecksTheContent) {
  const auto write_set = [&](const std::string& dir, const std::vector<uint32_t>& image_dims,
                             const std::string& labels) {
    fs::create_directories(scratch_.path / dir);
    const std::string prefix = dir + "/";
    uint64_t pixels = 1;
    for (const uint32_t d : image_dims) pixels *= d;
    for (const std::string set : {"train", "t10k"}) {
      write_gzip(prefix + set + "-images-idx3-ubyte.gz",
                 idx_header(0x08, image_dims) + std::string(pixels, 0));
      write_gzip(prefix + set + "-labels-idx1-ubyte.gz",
                 idx_header(0x08, {static_cast<uint32_t>(labels.size())}) + labels);
    }
    return (scratch_.path / dir).string();
  };
  const std::string good = write_set("good", {2, 28, 28}, std::string{0, 9});
  EXPECT_EQ(trainloop::data::fashion_mnist(good).first.size(), 2);
  const std::string odd = write_set("odd", {2, 27, 29}, std::string{0, 9});
  EXPECT_THAT([&] { trainloop::data::fashion_mnist(odd); },
              ThrowsMessage<Error>(HasSubstr(odd + "/train-images-idx3-ubyte.gz: images of "
                                                   "27\u00d729, expected 28\u00d728")));
  std::string labels(6, 1);
  labels[5] = static_cast<char>(200);
  const std::string bad_label = write_set("label", {6, 28, 28}, labels);
  EXPECT_THAT([&] { trainloop::data::fashion_mnist(bad_label); },
              ThrowsMessage<Error>(HasSubstr(bad_label + "/train-labels-idx1-ubyte.gz: label 200 "
                                                         "at index 5, expected 0 to 9")));
  const std::string short_labels = write_set("count", {3, 28, 28}, std::string{0, 9});
  EXPECT_THAT([&] { trainloop::data::fashion_mnist(short_labels); },
              ThrowsMessage<Error>(HasSubstr("holds 3 images, but " + short_labels +
                                             "/train-labels-idx1-ubyte.gz holds 2 labels")));
  // The generic reader takes any image size and label.
  EXPECT_EQ(read_idx_dataset(odd + "/train-images-idx3-ubyte.gz",
                             odd + "/train-labels-idx1-ubyte.gz").size(), 2);
}

TEST(IdxDatasetTest, FashionMnistNamesMissingFile) {
  EXPECT_THAT([&] { trainloop::data::fashion_mnist("/nonexistent-dir"); },
              ThrowsMessage<Error>(HasSubstr(
                  "/nonexistent-dir: neither train-images-idx3-ubyte nor "
                  "train-images-idx3-ubyte.gz found")));
}

}  // namespace
