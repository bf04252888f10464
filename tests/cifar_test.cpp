#include "trainloop/data/cifar.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <tuple>
#include <vector>

#include "support/test_support.h"
#include "trainloop/error.h"

namespace {

namespace fs = std::filesystem;
using testing::HasSubstr;
using testing::ThrowsMessage;
using trainloop::Error;
using trainloop::data::CifarVariant;
using trainloop::data::parse_cifar;
using trainloop::data::read_cifar;
using trainloop::data::TensorDataset;

constexpr int kPixels = 3072;

// Pixel j of record `seed`: a pattern that differs between records,
// channels and rows, so a misplaced byte shows.
unsigned char pixel(int seed, int j) { return static_cast<unsigned char>((seed * 131 + j * 7) % 251); }

// One record: the label bytes, then 3072 pixel bytes.
std::string record(const std::vector<int>& labels, int seed) {
  std::string bytes;
  for (const int label : labels) bytes.push_back(static_cast<char>(label));
  for (int j = 0; j < kPixels; ++j) bytes.push_back(static_cast<char>(pixel(seed, j)));
  return bytes;
}

class CifarTest : public testing::Test {
 protected:
  void SetUp() override {
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           (std::string("trainloop_cifar_test_") + info->name() + "_" +
            std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write_at(const fs::path& path, const std::string& bytes) {
    fs::create_directories(path.parent_path());
    std::ofstream(path, std::ios::binary) << bytes;
    return path.string();
  }
  std::string write(const std::string& name, const std::string& bytes) {
    return write_at(dir_ / name, bytes);
  }

  // The six CIFAR-10 files in `folder`; training batch b holds records with
  // labels b, b+1 (mod 10) and seeds 10b, 10b+1; the test batch label 9.
  void write_cifar10(const fs::path& folder) {
    for (int b = 1; b <= 5; ++b) {
      write_at(folder / ("data_batch_" + std::to_string(b) + ".bin"),
            record({b}, 10 * b) + record({(b + 1) % 10}, 10 * b + 1));
    }
    write_at(folder / "test_batch.bin", record({9}, 99));
  }

  fs::path dir_;
};

TEST_F(CifarTest, ReadsCifar10Records) {
  const std::string path =
      write("data_batch_1.bin", record({3}, 0) + record({0}, 1) + record({9}, 2));
  const TensorDataset data = read_cifar(path, CifarVariant::cifar10);
  EXPECT_EQ(data.inputs.scalar_type(), torch::kFloat32);
  EXPECT_EQ(data.inputs.sizes(), (std::vector<int64_t>{3, 3, 32, 32}));
  EXPECT_EQ(data.targets.scalar_type(), torch::kInt64);
  EXPECT_TRUE(torch::equal(data.targets, torch::tensor({3, 0, 9}, torch::kLong)));
  for (int i = 0; i < 3; ++i) {
    // Channel c, row y, column x is pixel byte 1024c + 32y + x.
    for (const auto& [c, y, x] : std::vector<std::tuple<int, int, int>>{
             {0, 0, 0}, {0, 0, 31}, {0, 1, 0}, {1, 0, 0}, {2, 31, 31}, {1, 17, 5}}) {
      const float expected = static_cast<float>(pixel(i, 1024 * c + 32 * y + x)) / 255.0f;
      EXPECT_FLOAT_EQ(data.inputs[i][c][y][x].item<float>(), expected)
          << "record " << i << " channel " << c << " row " << y << " column " << x;
    }
  }
  // Every byte lands once: scaling back gives the bytes in order.
  const torch::Tensor bytes = data.inputs[1].flatten().mul(255).round().to(torch::kLong);
  std::vector<int64_t> expected;
  for (int j = 0; j < kPixels; ++j) expected.push_back(pixel(1, j));
  EXPECT_TRUE(torch::equal(bytes, torch::tensor(expected, torch::kLong)));
}

TEST_F(CifarTest, ScalesToUnitRange) {
  std::string bytes(1, 4);
  bytes += std::string(kPixels / 2, '\0') + std::string(kPixels / 2, '\xff');
  const TensorDataset data = parse_cifar(bytes, "memory", CifarVariant::cifar10);
  EXPECT_EQ(data.inputs.min().item<float>(), 0.0f);
  EXPECT_EQ(data.inputs.max().item<float>(), 1.0f);
  EXPECT_EQ(data.targets.item<int64_t>(), 4);
}

TEST_F(CifarTest, ReadsCifar100FineAndCoarseLabels) {
  const std::string path = write("train.bin", record({19, 99}, 0) + record({0, 42}, 1));
  const TensorDataset fine = read_cifar(path, CifarVariant::cifar100_fine);
  const TensorDataset coarse = read_cifar(path, CifarVariant::cifar100_coarse);
  EXPECT_TRUE(torch::equal(fine.targets, torch::tensor({99, 42}, torch::kLong)));
  EXPECT_TRUE(torch::equal(coarse.targets, torch::tensor({19, 0}, torch::kLong)));
  EXPECT_EQ(fine.inputs.sizes(), (std::vector<int64_t>{2, 3, 32, 32}));
  // The pixels start after both label bytes.
  EXPECT_FLOAT_EQ(fine.inputs[1][0][0][0].item<float>(), pixel(1, 0) / 255.0f);
  EXPECT_FLOAT_EQ(fine.inputs[1][2][31][31].item<float>(), pixel(1, kPixels - 1) / 255.0f);
  EXPECT_TRUE(torch::equal(fine.inputs, coarse.inputs));
}

TEST_F(CifarTest, RecordSizes) {
  EXPECT_EQ(trainloop::data::cifar_record_bytes(CifarVariant::cifar10), 3073);
  EXPECT_EQ(trainloop::data::cifar_record_bytes(CifarVariant::cifar100_fine), 3074);
  EXPECT_EQ(trainloop::data::cifar_record_bytes(CifarVariant::cifar100_coarse), 3074);
}

TEST_F(CifarTest, MissingFile) {
  const std::string path = (dir_ / "data_batch_7.bin").string();
  EXPECT_THAT([&] { read_cifar(path, CifarVariant::cifar10); },
              ThrowsMessage<Error>(HasSubstr(path + ": cannot open: No such file or directory")));
  EXPECT_THAT([&] { read_cifar(dir_.string(), CifarVariant::cifar10); },
              ThrowsMessage<Error>(HasSubstr(dir_.string() + ": not a regular file (a directory)")));
  // Opening a FIFO would wait for a writer: it is refused before the open.
  const std::filesystem::path fifo = dir_ / "fifo.bin";
  trainloop::testing_support::make_fifo(fifo);
  EXPECT_EQ(trainloop::testing_support::error_reading_fifo(
                fifo, [&] { read_cifar(fifo.string(), CifarVariant::cifar10); }),
            fifo.string() + ": not a regular file (a FIFO)");
}

TEST_F(CifarTest, EmptyFile) {
  const std::string path = write("empty.bin", "");
  EXPECT_THAT([&] { read_cifar(path, CifarVariant::cifar10); },
              ThrowsMessage<Error>(HasSubstr(
                  path + ": empty, expected CIFAR-10 records of 3073 bytes (1 label byte + "
                         "3072 pixel bytes)")));
}

TEST_F(CifarTest, SizeNotAWholeNumberOfRecords) {
  const std::string path = write("cut.bin", record({1}, 0) + record({2}, 1).substr(0, 100));
  EXPECT_THAT([&] { read_cifar(path, CifarVariant::cifar10); },
              ThrowsMessage<Error>(HasSubstr(
                  path + ": 3173 bytes, expected a multiple of the 3073-byte CIFAR-10 record")));
  EXPECT_THAT([&] { read_cifar(path, CifarVariant::cifar10); },
              ThrowsMessage<Error>(HasSubstr("1 records are 3073 bytes, 2 are 6146")));
  // A CIFAR-10 file read as CIFAR-100 is caught by its size too.
  const std::string ten = write("ten.bin", record({1}, 0) + record({2}, 1));
  EXPECT_THAT([&] { read_cifar(ten, CifarVariant::cifar100_fine); },
              ThrowsMessage<Error>(HasSubstr(
                  ten + ": 6146 bytes, expected a multiple of the 3074-byte CIFAR-100")));
}

TEST_F(CifarTest, LabelOutOfRange) {
  const std::string path = write("bad.bin", record({1}, 0) + record({2}, 1) + record({10}, 2));
  EXPECT_THAT([&] { read_cifar(path, CifarVariant::cifar10); },
              ThrowsMessage<Error>(HasSubstr(
                  path + ": record 2 (byte offset 6146): label 10, expected 0 to 9")));
  // Both CIFAR-100 labels are checked, whichever one is kept.
  const std::string coarse = write("coarse.bin", record({5, 5}, 0) + record({20, 5}, 1));
  EXPECT_THAT([&] { read_cifar(coarse, CifarVariant::cifar100_fine); },
              ThrowsMessage<Error>(HasSubstr(
                  coarse + ": record 1 (byte offset 3074): coarse label 20, expected 0 to 19")));
  const std::string fine = write("fine.bin", record({5, 255}, 0));
  EXPECT_THAT([&] { read_cifar(fine, CifarVariant::cifar100_coarse); },
              ThrowsMessage<Error>(HasSubstr(
                  fine + ": record 0 (byte offset 1): fine label 255, expected 0 to 99")));
}

TEST_F(CifarTest, ParsesFromMemoryWithTheSourceName) {
  const std::string bytes = record({7}, 3);
  const TensorDataset data = parse_cifar(bytes, "upload #4", CifarVariant::cifar10);
  EXPECT_EQ(data.targets.item<int64_t>(), 7);
  EXPECT_THAT([&] { parse_cifar(std::string_view(bytes).substr(0, 5), "upload #4",
                                CifarVariant::cifar10); },
              ThrowsMessage<Error>(HasSubstr("upload #4: 5 bytes, expected a multiple")));
}

// What a fuzzer would do, in miniature: arbitrary bytes either parse into
// consistent tensors or give an Error, never anything else.
TEST_F(CifarTest, ArbitraryBytesParseOrFailCleanly) {
  uint64_t state = 12345;
  auto next = [&] {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<uint32_t>(state >> 33);
  };
  int parsed = 0;
  int rejected = 0;
  for (int round = 0; round < 300; ++round) {
    const size_t length = round < 100 ? next() % 8000 : 3073 * (1 + next() % 3);
    std::string bytes(length, '\0');
    // Small label-like bytes most of the time, so some inputs do parse.
    for (char& c : bytes) c = static_cast<char>(next() % 4 == 0 ? next() : next() % 10);
    for (const auto variant : {CifarVariant::cifar10, CifarVariant::cifar100_fine,
                               CifarVariant::cifar100_coarse}) {
      try {
        const TensorDataset data = parse_cifar(bytes, "fuzz", variant);
        const int64_t record = trainloop::data::cifar_record_bytes(variant);
        ASSERT_EQ(data.size() * record, static_cast<int64_t>(length));
        ASSERT_GE(data.targets.min().item<int64_t>(), 0);
        ASSERT_LT(data.targets.max().item<int64_t>(),
                  variant == CifarVariant::cifar100_coarse ? 20 : 100);
        ++parsed;
      } catch (const Error& e) {
        ASSERT_THAT(e.what(), HasSubstr("fuzz: "));
        ++rejected;
      }
    }
  }
  EXPECT_GT(parsed, 0);
  EXPECT_GT(rejected, 0);
}

TEST_F(CifarTest, ReadsSeveralFilesInOrder) {
  const std::string a = write("a.bin", record({1}, 0));
  const std::string b = write("b.bin", record({2}, 1) + record({3}, 2));
  const TensorDataset data = read_cifar(std::vector<std::string>{a, b}, CifarVariant::cifar10);
  EXPECT_TRUE(torch::equal(data.targets, torch::tensor({1, 2, 3}, torch::kLong)));
  EXPECT_FLOAT_EQ(data.inputs[2][0][0][1].item<float>(), pixel(2, 1) / 255.0f);
  EXPECT_THAT([&] { read_cifar(std::vector<std::string>{}, CifarVariant::cifar10); },
              ThrowsMessage<Error>(HasSubstr("no files given")));
}

TEST_F(CifarTest, Cifar10Directory) {
  write_cifar10(dir_);
  const auto [train, test] = trainloop::data::cifar10(dir_.string());
  EXPECT_EQ(train.inputs.sizes(), (std::vector<int64_t>{10, 3, 32, 32}));
  EXPECT_TRUE(torch::equal(train.targets,
                           torch::tensor({1, 2, 2, 3, 3, 4, 4, 5, 5, 6}, torch::kLong)));
  EXPECT_FLOAT_EQ(train.inputs[9][1][2][3].item<float>(), pixel(51, 1024 + 64 + 3) / 255.0f);
  EXPECT_TRUE(torch::equal(test.targets, torch::tensor({9}, torch::kLong)));
}

TEST_F(CifarTest, Cifar10ArchiveFolder) {
  write_cifar10(dir_ / "cifar-10-batches-bin");
  const auto [train, test] = trainloop::data::cifar10(dir_.string());
  EXPECT_EQ(train.size(), 10);
  EXPECT_EQ(test.size(), 1);
}

TEST_F(CifarTest, Cifar10NamesMissingFile) {
  write_cifar10(dir_);
  fs::remove(dir_ / "data_batch_4.bin");
  EXPECT_THAT([&] { trainloop::data::cifar10(dir_.string()); },
              ThrowsMessage<Error>(HasSubstr(dir_.string() + ": data_batch_4.bin not found")));
  EXPECT_THAT([&] { trainloop::data::cifar10((dir_ / "nowhere").string()); },
              ThrowsMessage<Error>(HasSubstr("nowhere: not a directory")));
}

TEST_F(CifarTest, Cifar100Directory) {
  write("train.bin", record({1, 11}, 0) + record({2, 22}, 1));
  write("test.bin", record({3, 33}, 2));
  const auto [train, test] = trainloop::data::cifar100(dir_.string());
  EXPECT_TRUE(torch::equal(train.targets, torch::tensor({11, 22}, torch::kLong)));
  const auto coarse = trainloop::data::cifar100(dir_.string(), CifarVariant::cifar100_coarse);
  EXPECT_TRUE(torch::equal(coarse.second.targets, torch::tensor({3}, torch::kLong)));
  EXPECT_THAT([&] { trainloop::data::cifar100(dir_.string(), CifarVariant::cifar10); },
              ThrowsMessage<Error>(HasSubstr("expected cifar100_fine or cifar100_coarse")));
}

}  // namespace
